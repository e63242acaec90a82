# session 46, call 4: the Gluon GPU tests on main (two Q slots for the dense kernel) in four processes on the one
# H100 (the setting of the forty-first session's false side_stream rejection), then the reference under memory pressure
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res/gpu-tests
git log --oneline -1 > /tmp/res/rev.txt
( while sleep 30; do save; done ) & saver=$!
timeout 420 python scripts/sharded_tests.py --shards 4 --out /tmp/res/gpu-tests -- tests/test_gpu_verifier.py -p no:logging \
  -k "gluon_kernel_is_verified or reads_q_from_shared_memory or masks_that_empty or skip_the_key_blocks" \
  > /tmp/res/gpu-tests.txt 2>&1; echo "rc=$?" >> /tmp/res/gpu-tests.txt
save
timeout $((585 - SECONDS)) python tools/reference_under_memory_pressure.py --free-mb 500 > /tmp/res/pressure.txt 2>&1
echo "rc=$?" >> /tmp/res/pressure.txt
kill $saver; save
