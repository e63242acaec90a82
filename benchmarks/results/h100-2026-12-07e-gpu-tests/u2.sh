# session 47, call 3: the same four of eight shards of the GPU test file as call 2 (`bash u1.sh 4,5,6,7`), now with
# the GPU's turns (verifier/gpu_turns.py), the per-process memory logged every 5 s; then the turn tests on the GPU
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res/gpu-tests
git log --oneline -1 > /tmp/res/rev.txt; git status --short >> /tmp/res/rev.txt
python -c "import filelock, torch; print('filelock', filelock.__version__, 'torch', torch.__version__)" >> /tmp/res/rev.txt
( while sleep 5; do echo "== $SECONDS"; nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader; done ) \
  > /tmp/res/memory.txt 2>&1 & watcher=$!
( while sleep 30; do save; done ) & saver=$!
timeout $((540 - SECONDS)) python scripts/sharded_tests.py --shards 8 --only 4,5,6,7 --out /tmp/res/gpu-tests -- \
  tests/test_gpu_verifier.py -p no:logging -p no:cacheprovider > /tmp/res/gpu-tests.txt 2>&1
echo "rc=$? after ${SECONDS}s" >> /tmp/res/gpu-tests.txt
timeout $((580 - SECONDS)) python -m pytest -q -p no:cacheprovider tests/test_gpu_turns.py > /tmp/res/turn-tests.txt 2>&1
echo "rc=$?" >> /tmp/res/turn-tests.txt
kill $watcher $saver; save
