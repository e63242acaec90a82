# On the GPU box: `kgen verify` of built-in rel_pos kernels at the two issue shapes, then the GPU-only tests.
source scripts/device_env.sh || exit 1
render() {  # spec, block_m, block_n, warps, stages, tma -> /tmp/<spec>_<bm>_<bn>.py
  python3 -c "
from verifier.spec import load_spec, SpecFiles
from agent.builtin.lower import lower_spec
from agent.builtin.template import render_kernel, KernelConfig
spec = load_spec(SpecFiles('examples/specs/$1.py'))
open('/tmp/$1_$2_$3.py', 'w').write(render_kernel(spec.name, lower_spec(spec), KernelConfig($2, $3, $4, $5, tma=$6)))"
}
render rel_pos 64 128 4 3 False
render rel_pos 128 128 8 3 True
( time python3 -m cli verify /tmp/rel_pos_64_128.py --score-mod examples/specs/rel_pos.py --batch 4 --heads 16 \
    --seq-len 4096 --head-dim 64 ) 2>&1 | tee $OUT/verify_d64.log | tail -16
( time python3 -m cli verify /tmp/rel_pos_128_128.py --score-mod examples/specs/rel_pos.py --batch 2 --heads 16 \
    --seq-len 8192 --head-dim 128 ) 2>&1 | tee $OUT/verify_d128.log | tail -16
timeout ${TESTS_S:-300} python3 -m pytest -q tests/test_gpu_verifier.py 2>&1 | tail -15 | tee $OUT/gpu_tests.log
