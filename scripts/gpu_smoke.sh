source scripts/device_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv
python3 -c "import torch, triton, openai; print(torch.__version__, triton.__version__, openai.__version__)"
set -x
time python3 -m cli attention --score-mod examples/specs/rel_pos.py --runs-dir $OUT/runs --budget 6m 2>&1 | tee $OUT/attn_rel_pos.log
for s in causal key_padding; do
  python3 -c "
from verifier.spec import load_spec, SpecFiles
from agent.builtin.lower import lower_spec
from agent.builtin.template import render_kernel, KernelConfig
spec = load_spec(SpecFiles('examples/specs/$s.py'))
open('/tmp/$s.py','w').write(render_kernel(spec.name, lower_spec(spec), KernelConfig(128, 64, 4, 3)))"
  time python3 -m cli verify /tmp/$s.py --score-mod examples/specs/$s.py --json > $OUT/verify_$s.json 2> $OUT/verify_$s.err
  python3 -c "import json; d=json.load(open('$OUT/verify_$s.json'))['verdict']; print('$s', d['accepted'], d['reason'], d['message'][:500]); print({k: v for k, v in d['metrics'].items() if v is not None})"
done
tar czf $OUT/runs.tgz -C $OUT runs && rm -rf $OUT/runs
