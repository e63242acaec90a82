"""Run one built-in kernel a few times on random inputs, for a profiler to pick a launch (CUDA).

    ncu --kernel-name regex:_attn_fwd --launch-skip 2 --launch-count 1 --section SpeedOfLight \\
        --section WarpStateStats --section SchedulerStats --section InstructionStats --csv --page details \\
        python benchmarks/run_kernel.py examples/specs/rel_pos.py "BM128 BN64 w4 s4 gluon" --shape 2x16x8192x128

The first call compiles (and, with a mask, builds the block map), so skip the first launches.
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
from benchmarks.bench import load_module  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a spec file (score_mod and/or mask_mod)")
    parser.add_argument("config", help='a built-in config label, e.g. "BM128 BN64 w4 s4 gluon"')
    parser.add_argument("--shape", default="2x16x8192x128", help="BxHxNxD")
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--device", default="cuda", help="cpu runs Triton's interpreter (TRITON_INTERPRET=1), in fp16")
    args = parser.parse_args()
    spec = load_spec(SpecFiles(args.spec))
    source = render_kernel(spec.name, lower_spec(spec), KernelConfig.from_label(args.config))
    with tempfile.TemporaryDirectory(prefix="kgen-run-kernel-") as tmp:
        attention = load_module(source, Path(tmp)).attention
        batch, heads, seq, dim = (int(x) for x in args.shape.split("x"))
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float16  # the interpreter's bf16 dot is wrong
        q, k, v = (torch.randn(batch, heads, seq, dim, device=args.device, dtype=dtype) for _ in range(3))
        buffers = {name: t.to(args.device) for name, t in spec.buffers.items()}
        for _ in range(args.calls):
            attention(q, k, v, **buffers)
        if args.device == "cuda":
            torch.cuda.synchronize()
    print(f"{args.calls} calls of {spec.name} ({args.config}) at {args.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
