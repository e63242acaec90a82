# session 48: the whole GPU test file at HEAD with the GPU's turns, dealt over 10 shards, five processes a call
# (call 1 `bash u1.sh 10 5,6,7,8,9`, which holds this session's two new turn tests; call 2 `bash u1.sh 10 0,1,2,3,4
# 560`, the device time left allowing no more), the per-process GPU memory logged every 5 s, the tests cut off at
# LIMIT s into the command
SHARDS=$1 ONLY=$2 LIMIT=${3:-585}
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res/gpu-tests
git log --oneline -1 > /tmp/res/rev.txt; git status --short >> /tmp/res/rev.txt
nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total --format=csv >> /tmp/res/rev.txt
python -c "import filelock, torch, triton; print('filelock', filelock.__version__, 'torch', torch.__version__, 'triton', triton.__version__)" >> /tmp/res/rev.txt
( while sleep 5; do echo "== $SECONDS"; nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader; done ) \
  > /tmp/res/memory.txt 2>&1 & watcher=$!
( while sleep 30; do save; done ) & saver=$!
timeout $((LIMIT - SECONDS)) python scripts/sharded_tests.py --shards $SHARDS --only $ONLY --out /tmp/res/gpu-tests -- \
  tests/test_gpu_verifier.py -p no:logging -p no:cacheprovider > /tmp/res/gpu-tests.txt 2>&1
echo "rc=$? after ${SECONDS}s" >> /tmp/res/gpu-tests.txt
kill $watcher $saver; save
