# On the GPU box: the GPU-only tests, then the benchmark for one shape (rows stream to $OUT/bench.json).
source scripts/device_env.sh || exit 1
timeout 290 python3 -m pytest -q tests/test_gpu_verifier.py 2>&1 | tail -25 | tee $OUT/gpu_tests.log
timeout ${BENCH_S:-270} python3 benchmarks/bench.py --shapes ${SHAPES:-2x16x8192x128} --specs ${SPECS:-noop,causal,rel_pos,softcap} \
  --flex ${FLEX:-default,max-autotune} --out $OUT/bench.json 2>&1 | grep -v "^\s*$" | tail -40
