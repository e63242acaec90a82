"""Run one built-in kernel a few times on random inputs, for a profiler to pick a launch (CUDA).

    ncu --kernel-name regex:_attn_fwd --launch-skip 2 --launch-count 1 --section SpeedOfLight \\
        --section WarpStateStats --section SchedulerStats --section InstructionStats --csv --page details \\
        python benchmarks/run_kernel.py examples/specs/rel_pos.py "BM128 BN64 w4 s4 gluon" --shape 2x16x8192x128

The first call compiles (and, with a mask, builds the block map), so skip the first launches. `--flash` runs
FlashAttention-4 through flex's FLASH backend instead (the benchmark's `--flex flash`; needs flash-attn-4), so the
same profiler command can read both kernels side by side (its kernel's name matches `regex:Attention`).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.builtin.lower import lower_spec  # noqa: E402
from agent.builtin.template import KernelConfig, render_kernel  # noqa: E402
from benchmarks.bench import load_module, parse_shape  # noqa: E402
from verifier.baseline import flex_call  # noqa: E402
from verifier.reference import buffers_on  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a spec file (score_mod and/or mask_mod)")
    parser.add_argument("config", nargs="?", help='a built-in config label, e.g. "BM128 BN64 w4 s4 gluon"')
    parser.add_argument("--flash", action="store_true", help="run FlashAttention-4 through flex instead")
    parser.add_argument("--shape", default="2x16x8192x128", help="BxHxNxD (BxH/HKVxNxD with GQA)")
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--device", default="cuda", help="cpu runs Triton's interpreter (TRITON_INTERPRET=1), in fp16")
    args = parser.parse_args()
    if (args.config is None) != args.flash:
        parser.error("give a built-in config label, or --flash")
    spec = load_spec(SpecFiles(args.spec))
    shape = parse_shape(args.shape)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float16  # the interpreter's bf16 dot is wrong
    q, k, v = (torch.randn(shape.batch, heads, shape.seq_len, shape.head_dim, device=args.device, dtype=dtype)
               for heads in (shape.heads, shape.kv_heads, shape.kv_heads))
    buffers = {name: t.to(args.device) for name, t in spec.buffers.items()}
    # flex reads the spec's captured buffers where its functions see them: swapped for the device's copies
    with tempfile.TemporaryDirectory(prefix="kgen-run-kernel-") as tmp, buffers_on(spec, buffers):
        attention = flex_call(spec, shape, "flash") if args.flash else builtin_attention(spec, args.config, Path(tmp))
        for _ in range(args.calls):
            attention(q, k, v, **buffers)
        if args.device == "cuda":
            torch.cuda.synchronize()
    print(f"{args.calls} calls of {spec.name} ({args.config or 'FlashAttention-4'}) at {args.shape}")
    return 0


def builtin_attention(spec, label: str, workdir: Path):
    """The `attention` function of the built-in kernel for the spec at the config `label`, its module in workdir."""
    return load_module(render_kernel(spec.name, lower_spec(spec), KernelConfig.from_label(label)), workdir).attention


if __name__ == "__main__":
    sys.exit(main())
