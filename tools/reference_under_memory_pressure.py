"""The verifier's reference for a past-limits trial on a GPU whose memory another allocation holds, against the
same reference with the GPU free: the same rows, in smaller chunks (verifier.reference.in_shrinking_chunks).

On an H100 shared by four test processes, the reference's chunk of 8192 heads failed to allocate its float64 k
and v (thirty-ninth session); the CPU tests cover the shrinking with a stand-in for CUDA's allocator, this runs it
on a real one. It holds all but --free-mb of the GPU while it runs: run it alone, not beside the GPU tests.

    python tools/reference_under_memory_pressure.py --free-mb 500
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifier import every_row, reference  # noqa: E402
from verifier.problem import Shape  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402
from verifier.suite import Trial  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the trial that ran out: B2 H174848 N48x53 D128, past 65535 batch x heads and 2**31 elements
PAST_LIMITS = Shape(batch=2, heads=174848, kv_heads=174848, seq_len=48, kv_seq_len=53, head_dim=128)


def chunk_sizes_while(run) -> tuple[object, list[int]]:
    """run()'s result and the sizes of the chunks that ran (heads or query rows), counted through the helper."""
    sizes, shrinking = [], reference.in_shrinking_chunks

    def counted(total, size, work):
        for start, stop, result in shrinking(total, size, work):
            sizes.append(stop - start)
            yield start, stop, result
    reference.in_shrinking_chunks = counted
    try:
        return run(), sizes
    finally:
        reference.in_shrinking_chunks = shrinking


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--free-mb", type=int, default=500, help="GPU memory left free while the reference runs")
    parser.add_argument("--spec", default=str(ROOT / "examples" / "specs" / "noop.py"))
    args = parser.parse_args()
    spec = load_spec(SpecFiles(args.spec))
    trial = Trial(id="t17", purpose="past limits", shape=PAST_LIMITS, seed=944468073,
                  sample=((0, 0), (1, PAST_LIMITS.heads - 1)))

    def rows():
        return every_row.reference_rows(trial, spec, torch.bfloat16, "cuda")

    started = time.perf_counter()
    free_rows, free_sizes = chunk_sizes_while(rows)
    print(f"GPU free: {time.perf_counter() - started:.1f} s, chunk sizes {sorted(set(free_sizes))}")
    torch.cuda.empty_cache()
    hold = torch.empty(torch.cuda.mem_get_info()[0] - args.free_mb * 2**20, dtype=torch.uint8, device="cuda")
    print(f"holding {hold.numel() / 2**30:.1f} GB, {torch.cuda.mem_get_info()[0] / 2**20:.0f} MB left free")
    started = time.perf_counter()
    held_rows, held_sizes = chunk_sizes_while(rows)
    print(f"GPU held: {time.perf_counter() - started:.1f} s, chunk sizes {sorted(set(held_sizes))}")
    same = all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(held_rows, free_rows))
    print("the same rows" if same else "DIFFERENT ROWS")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
