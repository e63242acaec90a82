# session 47, calls 1 and 2: the whole GPU test file on main, dealt over 8 shards, four at a time in one call
# (`bash u1.sh 0,1,2,3`, then `bash u1.sh 4,5,6,7`), the GPU's per-process memory logged every 5 s
ONLY=$1
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res/gpu-tests
git log --oneline -1 > /tmp/res/rev.txt
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > /tmp/res/gpu.txt
( while sleep 5; do echo "== $SECONDS"; nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader; done ) \
  > /tmp/res/memory.txt 2>&1 & watcher=$!
( while sleep 30; do save; done ) & saver=$!
timeout $((570 - SECONDS)) python scripts/sharded_tests.py --shards 8 --only $ONLY --out /tmp/res/gpu-tests -- \
  tests/test_gpu_verifier.py -p no:logging -p no:cacheprovider > /tmp/res/gpu-tests.txt 2>&1
echo "rc=$? after ${SECONDS}s" >> /tmp/res/gpu-tests.txt
kill $watcher $saver; save
