"""When each query tile of a persistent masked Gluon kernel ends, read from the GPU's global timer (CUDA).

A persistent kernel deals its tiles to one program per SM before it runs (`_get_schedule`), by a cost model: a
tile's key blocks plus one. Where that model is wrong, some SMs finish early and wait for the busiest; FlashAttention
-4 launches a program per tile and lets the GPU hand them out as SMs free up. This script renders the built-in
kernel with a timer added (`timed_source`: the first consumer warpgroup of each program writes the global timer when
it starts and when it ends each tile), runs it back to back, and reports from the last call:

- the span of the call, and how long the programs stand idle at its end waiting for the last (the tail);
- a tile's time against its key blocks (a least-squares line): the cost model's "plus one" is the line's
  intercept over its slope.

    python benchmarks/tile_times.py examples/specs/key_padding.py "BM128 BN128 w4 s2 gluon persistent" \\
        --shape 2x16x8192x128 --out /tmp/res/tiles.json

The timer adds a global store a tile and waits for nothing; the kernel as shipped is timed beside it, back to back
alike, so that what the timer costs shows. Each read's programs, their busy time and their work in the cost model go
to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.builtin.lower import lower_spec  # noqa: E402
from agent.builtin.template import KernelConfig, render_kernel  # noqa: E402
from benchmarks.bench import load_module, parse_shape  # noqa: E402
from benchmarks.sustained import ms_a_call  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402

TIMER = '''

@gluon.jit
def _global_timer(after):
    """The low 32 bits of the GPU's nanosecond timer, read after `after` (a value it depends on, so that the
    compiler keeps the read in place)."""
    return gl.inline_asm_elementwise("mov.u32 $0, %globaltimer_lo;", "=r,r", [after], dtype=gl.int32,
                                     is_pure=False, pack=1)
'''
# The timer's slots follow the schedule's offsets in the wrapper's OFFSETS tensor, which the last patch makes room
# in, zeroed: a slot per tile's end, by its place in the schedule, then one per program's start.
CONSUMER = "\n\n@gluon.jit\ndef _consumer("
TILE_LOOP = "    t = 0\n    j = 0  # the ring's position at the tile's first block\n"
TILE_LOOP_END = "    tma.store_wait(0)\n\n\n@gluon.jit\ndef _consumer_tile("  # after the loop's last statement
ROOM = "offsets = torch.empty(programs + 1, dtype=torch.int32, device=summary.device)\n"
PATCHES = [  # (anchor in the rendered source, what it becomes)
    (CONSUMER, TIMER + CONSUMER),
    (TILE_LOOP, "    TIMES = OFFSETS + gl.num_programs(0) + 1\n"
                "    if half == 0:\n"
                "        gl.store(TIMES + gl.load(OFFSETS + gl.num_programs(0)) + gl.program_id(0), _global_timer(half))\n"
                + TILE_LOOP),
    (TILE_LOOP_END, "        if half == 0:\n"
                    "            gl.store(TIMES + i, _global_timer(j))\n" + TILE_LOOP_END),
    (ROOM, "offsets = torch.zeros(2 * programs + 1 + B * H * summary.shape[2], dtype=torch.int32, "
           "device=summary.device)\n"),
]


class NotPatchable(ValueError):
    """The rendered kernel is not the persistent masked Gluon kernel this script knows how to time."""


def timed_source(source: str) -> str:
    """The kernel's source with the timer added: each anchor must be there exactly once."""
    for anchor, patched in PATCHES:
        if source.count(anchor) != 1:
            raise NotPatchable(f"anchor found {source.count(anchor)} times, not once: {anchor.strip().splitlines()[0]!r}")
        source = source.replace(anchor, patched)
    return source


def schedule(module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The one schedule the kernel ran with (offsets with the timer's room, tiles) and its programs."""
    if len(module._SCHEDULES) != 1:
        raise RuntimeError(f"expected one cached schedule, found {len(module._SCHEDULES)}")
    (offsets, tiles), = module._SCHEDULES.values()
    return offsets, tiles, (offsets.numel() - 1 - tiles.numel()) // 2


@dataclass
class TileTimes:
    programs: int
    tiles: int
    span_us: float  # first program's start to last tile's end
    start_skew_us: float  # last program's start after the first's
    tail_us: float  # the programs' mean wait at the end for the last one
    tail_fraction: float  # tail_us / span_us: what a perfect balance could save at most
    busiest_over_mean: float  # the busiest program's time over the programs' mean (1: balanced)
    us_per_block: float  # a tile's time: us_per_block * key blocks + us_per_tile (least squares, tiles after a
    us_per_tile: float  # program's first)
    model_per_tile_blocks: float  # us_per_tile / us_per_block: the cost model takes 1
    ms_a_call: float = 0.0  # back to back, by CUDA events (the timed kernel)
    program_busy_us: list = field(default_factory=list)  # each program's start to its last tile's end
    program_work: list = field(default_factory=list)  # each program's work in the cost model (blocks + 1 a tile)


def read_times(room: torch.Tensor, tiles: torch.Tensor, programs: int, blocks: torch.Tensor) -> TileTimes:
    """The timer's slots after a call (the offsets' tensor, the schedule's offsets first): `tiles` is the schedule,
    program p's tiles at tiles[offsets[p]:offsets[p + 1]], `blocks[tile]` each tile's key blocks (by tile number)."""
    room = room.cpu().to(torch.int64)
    offsets, n_tiles = room[:programs + 1], tiles.numel()
    ends = room[programs + 1:programs + 1 + n_tiles]
    starts = room[programs + 1 + n_tiles:programs + 1 + n_tiles + programs]
    # the low 32 bits wrap every 4.3 s: times as signed differences from one start (a call is far shorter)
    ends, starts = _since(ends, starts[0]), _since(starts, starts[0])
    ends, starts = ends - starts.min(), starts - starts.min()
    order = tiles.cpu().to(torch.int64)
    finish, busy, work, durations, weights = [], [], [], [], []
    for p in range(programs):
        first, last = int(offsets[p]), int(offsets[p + 1])
        if first == last:
            continue
        finish.append(int(ends[last - 1]))
        busy.append(int(ends[last - 1] - starts[p]))
        work.append(sum(int(blocks[order[i]]) + 1 for i in range(first, last)))
        for i in range(first + 1, last):
            durations.append(float(ends[i] - ends[i - 1]))
            weights.append(float(blocks[order[i]]))
    span = max(finish)
    per_block, per_tile = _line(weights, durations)
    tail = sum(span - f for f in finish) / len(finish)
    return TileTimes(programs=programs, tiles=n_tiles, span_us=span / 1e3, start_skew_us=float(starts.max()) / 1e3,
                     tail_us=tail / 1e3, tail_fraction=tail / span, busiest_over_mean=max(busy) * len(busy) / sum(busy),
                     us_per_block=per_block / 1e3, us_per_tile=per_tile / 1e3,
                     model_per_tile_blocks=per_tile / per_block if per_block else float("nan"),
                     program_busy_us=[b / 1e3 for b in busy], program_work=work)


def _since(times: torch.Tensor, reference) -> torch.Tensor:
    """Nanoseconds from `reference` to each of `times`, all the low 32 bits of the timer."""
    ns = (times - reference) % 2**32
    return torch.where(ns >= 2**31, ns - 2**32, ns)


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of y on x (slope 0 where every x is the same)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def tile_blocks(module, q, k, buffers) -> torch.Tensor:
    """Each query tile's key blocks (by tile number, (b * H + h) * n_m + m), from the kernel's block map."""
    buf = {n: buffers[n] for n in module.BUFFERS}
    summary = module._get_block_map(q, k, buf)[0].cpu()
    B, H = q.shape[:2]
    bm, hm, n_m = summary.shape[:3]
    work = summary[..., 0] + summary[..., 2]  # whole blocks and cut ones
    return torch.stack([work[b if bm > 1 else 0, h if hm > 1 else 0] for b in range(B) for h in range(H)]).flatten()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a spec file with a mask_mod")
    parser.add_argument("config", help='a persistent Gluon config label, e.g. "BM128 BN128 w4 s2 gluon persistent"')
    parser.add_argument("--shape", default="2x16x8192x128", help="BxHxNxD")
    parser.add_argument("--calls", type=int, default=50, help="back to back before the one read")
    parser.add_argument("--reads", type=int, default=3, help="how many times to do so")
    parser.add_argument("--out", type=Path, help="a JSON file for the results")
    args = parser.parse_args()
    spec = load_spec(SpecFiles(args.spec))
    cfg = KernelConfig.from_label(args.config)
    if not (spec.mask_mod and cfg.gluon and cfg.persistent):
        parser.error("needs a spec with a mask_mod and a persistent Gluon config")
    shape = parse_shape(args.shape)
    q, k, v = (torch.randn(shape.batch, heads, shape.seq_len, shape.head_dim, device="cuda", dtype=torch.bfloat16)
               for heads in (shape.heads, shape.kv_heads, shape.kv_heads))
    buffers = {name: t.cuda() for name, t in spec.buffers.items()}
    source = render_kernel(spec.name, lower_spec(spec), cfg)
    with tempfile.TemporaryDirectory(prefix="kgen-tile-times-") as tmp:
        plain = load_module(source, Path(tmp)).attention
        module = load_module(timed_source(source), Path(tmp))
        if getattr(module, "RESIDUES", 1) > 1:  # its block map is of residue classes, not of the tiles as launched
            parser.error("a dilated mask's kernel runs its residue classes apart: its tiles are not timed here")
        module.attention(q, k, v, **buffers)  # compiles, builds the block map and the schedule
        plain(q, k, v, **buffers)
        room, tiles, programs = schedule(module)
        blocks = tile_blocks(module, q, k, buffers)
        reads, plain_ms = [], []
        for _ in range(args.reads):  # the timed kernel, then the kernel as shipped, back to back alike
            timed_ms = ms_a_call(lambda: module.attention(q, k, v, **buffers), args.calls)
            reads.append(replace(read_times(room, tiles, programs, blocks), ms_a_call=timed_ms))
            plain_ms.append(ms_a_call(lambda: plain(q, k, v, **buffers), args.calls))
    for r, ms in zip(reads, plain_ms):
        print(f"{spec.name} {args.shape} {args.config}: span {r.span_us:.1f} us, tail {r.tail_us:.1f} us "
              f"({100 * r.tail_fraction:.1f}%), busiest/mean {r.busiest_over_mean:.3f}, start skew "
              f"{r.start_skew_us:.1f} us, a tile {r.us_per_block:.3f} us/block + {r.us_per_tile:.2f} us "
              f"(= {r.model_per_tile_blocks:.2f} blocks); {r.ms_a_call:.3f} ms a call timed, {ms:.3f} as shipped")
    if args.out:
        args.out.write_text(json.dumps({"spec": spec.name, "shape": args.shape, "config": args.config,
                                        "reads": [asdict(r) for r in reads], "shipped_ms_a_call": plain_ms},
                                       indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
