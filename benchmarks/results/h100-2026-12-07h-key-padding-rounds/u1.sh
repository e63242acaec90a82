# session 51: key padding at D128 beside FlashAttention-4 with the bench's second round (and plain attention, the
# dense kernel it mirrors, in the same run); the same two kernels back to back under sustained load; the baseline's
# GPU test, not run since measure_baseline's mend (0b7af9d). `bash u1.sh [LIMIT]`
LIMIT=${1:-585}
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > /tmp/res/gpu.txt
git log --oneline -1 > /tmp/res/rev.txt; git status --short >> /tmp/res/rev.txt
( while sleep 30; do save; done ) & saver=$!
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_gpu_verifier.py \
  -k test_a_baseline_timed_without_the_gpus_turn_is_said_and_not_cached > /tmp/res/gpu-test.txt 2>&1
echo "rc=$? after ${SECONDS}s" >> /tmp/res/gpu-test.txt
timeout $((LIMIT - 150 - SECONDS)) python benchmarks/bench.py --specs key_padding,noop --flex flash \
  --shapes 8x16x2048x128,2x16x8192x128 --out /tmp/res/table.json > /tmp/res/table.txt 2>&1
echo "rc=$? after ${SECONDS}s" >> /tmp/res/table.txt
for shape in 8x16x2048x128 2x16x8192x128; do
  timeout $(( (LIMIT - SECONDS) / 2 )) python benchmarks/sustained.py examples/specs/key_padding.py \
    --config "BM128 BN128 w4 s2 gluon persistent" --flash --shape $shape --out /tmp/res/sustained-$shape.json \
    > /tmp/res/sustained-$shape.txt 2>&1
  echo "rc=$? after ${SECONDS}s" >> /tmp/res/sustained-$shape.txt
done
kill $saver; save
