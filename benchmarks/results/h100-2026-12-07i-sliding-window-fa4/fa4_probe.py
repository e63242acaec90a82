"""Why FlashAttention-4's sliding-window figure moves between sessions (about 210 TFLOP/s at B2 H16 N8192 D128 in
most tables, 121-125 in some): in a fresh process, the block mask flex hands it (blocks listed as full and as
partial), the kernels one call launches (names, grid sizes where the profiler gives them, device time), and the
call's time as the benchmark measures it. `python fa4_probe.py SPEC SHAPE OUT.json`"""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from benchmarks.bench import parse_shape, time_on_sets  # noqa: E402
from verifier.baseline import flex_call  # noqa: E402
from verifier.reference import buffers_on, mask_density  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402
from verifier.suite import Trial, make_inputs  # noqa: E402


def block_counts(spec, shape):
    from torch.nn.attention.flex_attention import create_block_mask
    mask = create_block_mask(spec.mask_mod, shape.batch, shape.heads, shape.seq_len, shape.kv_seq_len, device="cuda")
    full = mask.full_kv_num_blocks
    return {"block_size": list(mask.BLOCK_SIZE), "partial_blocks": int(mask.kv_num_blocks.sum()),
            "full_blocks": None if full is None else int(full.sum())}


def main():
    spec, shape, out = load_spec(SpecFiles(sys.argv[1])), parse_shape(sys.argv[2]), Path(sys.argv[3])
    sets = [make_inputs(Trial(id=f"s{i}", purpose="probe", shape=shape, seed=9001 + i), torch.bfloat16, "cuda")
            for i in range(3)]
    result = {"spec": spec.name, "shape": sys.argv[2], "torch": torch.__version__}
    with buffers_on(spec, {n: t.cuda() for n, t in spec.buffers.items()}):
        result["block_mask"] = block_counts(spec, shape)
        call = flex_call(spec, shape, "flash")
        for _ in range(3):
            call(*sets[0])
        torch.cuda.synchronize()
        result["ms"] = [time_on_sets(sets, call) for _ in range(3)]
        density = mask_density(spec, shape, "cuda")
        result["tflops"] = [shape.dense_flops() * density / (ms * 1e-3) / 1e12 for ms in result["ms"]]
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            call(*sets[0])
            torch.cuda.synchronize()
        result["kernels"] = [{"name": e.key[:200], "count": e.count, "device_us": e.device_time_total}
                             for e in prof.key_averages() if e.device_time_total > 0]
    print(json.dumps(result, indent=1))
    out.write_text(json.dumps(result, indent=1))


main()
