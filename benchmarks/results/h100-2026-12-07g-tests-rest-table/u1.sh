# session 49: the GPU tests the forty-eighth session's calls did not reach (its passed.outcomes left out), dealt over
# 4 shards in one call, the per-process GPU memory logged every 5 s, the GPU's turns logged (turns.log)
LIMIT=${1:-585}
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res/gpu-tests
git log --oneline -1 > /tmp/res/rev.txt; git status --short >> /tmp/res/rev.txt
nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total --format=csv >> /tmp/res/rev.txt
python -c "import filelock, torch, triton; print('filelock', filelock.__version__, 'torch', torch.__version__, 'triton', triton.__version__)" >> /tmp/res/rev.txt
( while sleep 5; do echo "== $SECONDS"; nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader; done ) \
  > /tmp/res/memory.txt 2>&1 & watcher=$!
( while sleep 30; do save; done ) & saver=$!
timeout $((LIMIT - SECONDS)) python scripts/sharded_tests.py --shards 4 \
  --skip-passed benchmarks/results/h100-2026-12-07f-gpu-tests-turns/passed.outcomes --out /tmp/res/gpu-tests -- \
  tests/test_gpu_verifier.py -p no:logging -p no:cacheprovider > /tmp/res/gpu-tests.txt 2>&1
echo "rc=$? after ${SECONDS}s" >> /tmp/res/gpu-tests.txt
kill $watcher $saver; save
