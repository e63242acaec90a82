# session 53: the first GPU run of the verifier's timing since its calls launch through one helper (_enqueue_timed)
# and of the benchmark's queued timing (time_queued, the "GPU time" phase): the GPU tests that time kernels, then the
# whole benchmark beside flex (default, max-autotune, FLASH = FlashAttention-4 from the carried .fa4) and SDPA on the
# shapes given. `bash u1.sh LIMIT SHAPES NAME [TESTS]` (TESTS: a pytest -k expression; none: no tests); SPECS and
# FLEX in the environment narrow the table (bench.py's --specs, --flex)
LIMIT=$1 SHAPES=$2 NAME=$3 TESTS=$4
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > /tmp/res/gpu.txt
git log --oneline -1 > /tmp/res/rev.txt; git status --short >> /tmp/res/rev.txt
( while sleep 30; do save; done ) & saver=$!
if [ -n "$TESTS" ]; then
  timeout $((LIMIT / 3)) python -m pytest tests/test_gpu_verifier.py -k "$TESTS" -p no:cacheprovider -rA \
    > /tmp/res/gpu-tests.txt 2>&1; echo "rc=$? after ${SECONDS}s" >> /tmp/res/gpu-tests.txt
fi
timeout $((LIMIT - SECONDS)) python benchmarks/bench.py --flex ${FLEX:-default,max-autotune,flash} \
  --specs "$SPECS" --shapes $SHAPES \
  --out /tmp/res/table-$NAME.json > /tmp/res/table-$NAME.txt 2>&1; echo "rc=$? after ${SECONDS}s" >> /tmp/res/table-$NAME.txt
kill $saver; save
