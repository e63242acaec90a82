# session 48, call 1: the GPU turn test that had not run on a GPU, then shards 0 to 3 of 8 of the GPU test file
# (`bash u1.sh 0,1,2,3`; later `bash u1.sh 4,5,6,7`), four processes with the GPU's turns, the per-process memory
# logged every 5 s
ONLY=$1
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res/gpu-tests
git log --oneline -1 > /tmp/res/rev.txt; git status --short >> /tmp/res/rev.txt
nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total --format=csv >> /tmp/res/rev.txt
python -c "import filelock, torch, triton; print('filelock', filelock.__version__, 'torch', torch.__version__, 'triton', triton.__version__)" >> /tmp/res/rev.txt
( while sleep 5; do echo "== $SECONDS"; nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader; done ) \
  > /tmp/res/memory.txt 2>&1 & watcher=$!
( while sleep 30; do save; done ) & saver=$!
if [ "$ONLY" = 0,1,2,3 ]; then
  timeout 120 python -m pytest -q -p no:cacheprovider -p no:logging \
    "tests/test_gpu_verifier.py::test_a_verification_waits_for_the_gpus_turn_another_holds_on_its_own_turn_file" \
    -rA > /tmp/res/turn-test.txt 2>&1
  echo "rc=$? after ${SECONDS}s" >> /tmp/res/turn-test.txt
fi
timeout $((575 - SECONDS)) python scripts/sharded_tests.py --shards 8 --only $ONLY --out /tmp/res/gpu-tests -- \
  tests/test_gpu_verifier.py -p no:logging -p no:cacheprovider > /tmp/res/gpu-tests.txt 2>&1
echo "rc=$? after ${SECONDS}s" >> /tmp/res/gpu-tests.txt
kill $watcher $saver; save
