# On the GPU box: `kgen verify` of built-in kernels at the issue shapes, then the GPU-only tests.
source scripts/device_env.sh || exit 1
verify() {  # spec, config label, kgen verify shape flags...
  local spec=$1 label=$2; shift 2
  python3 -c "
from verifier.spec import load_spec, SpecFiles
from agent.builtin.lower import lower_spec
from agent.builtin.template import render_kernel, KernelConfig
spec = load_spec(SpecFiles('examples/specs/$spec.py'))
open('/tmp/$spec.py', 'w').write(render_kernel(spec.name, lower_spec(spec), KernelConfig.from_label('$label')))"
  ( time python3 -m cli verify /tmp/$spec.py --score-mod examples/specs/$spec.py "$@" ) 2>&1 \
    | tee $OUT/verify_${spec}_$(echo "$@" | tr -dc '0-9').log | tail -16
}
verify rel_pos "BM64 BN128 w4 s2 tma" --batch 4 --heads 16 --seq-len 4096 --head-dim 64
verify softcap "BM128 BN128 w8 s3 tma" --batch 2 --heads 16 --seq-len 8192 --head-dim 128
timeout ${TESTS_S:-360} python3 -m pytest -q tests/test_gpu_verifier.py tests/test_bench_report.py 2>&1 | tail -15 \
  | tee $OUT/gpu_tests.log
