"""How long the built-in Gluon kernel's consumer warpgroups wait for their operands to land (CUDA, sm_90).

A consumer waits at mbarriers for the loader's copies: Q at a tile's start, then each key block's K and V. Where
the loader keeps ahead those waits pass at once, and a deeper ring of stages could not help; where a copy's
latency is exposed they take a share of the consumer's time. The Nsight Compute stall counts cannot tell the two
apart (the loader's warps poll barriers too). This script renders the kernel with each consumer wait timed
(`timed_source`: the SM's cycle counter read before and after it, the difference added to a counter of the SM,
by the first thread of each warpgroup) and reports, summed over the SMs, what share of the consumers' cycles each
kind of wait took:

- `q`: the tile's Q (a tile's start), `first_k`: its first key block's K,
- `k`: the next block's K in the key loop, `v`: the block's V for its PV (the tile's last one too),
- `store`: the output staging tile's last copy out (a tile ago).

    python benchmarks/wait_times.py examples/specs/key_padding.py "BM128 BN128 w4 s2 gluon persistent" \\
        --shape 2x16x8192x128 --out /tmp/res/waits.json

Every wait costs some cycles when it passes at once (the barrier's test, the counter reads); the per-wait mean
shows them. The timed kernel is timed back to back beside the kernel as shipped, so that what the timing costs
shows too.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.builtin.lower import lower_spec  # noqa: E402
from agent.builtin.template import KernelConfig, render_kernel  # noqa: E402
from benchmarks.bench import load_module, parse_shape  # noqa: E402
from benchmarks.sustained import ms_a_call  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402

KINDS = ("q", "first_k", "k", "v", "store")
BUSY = len(KINDS)  # the consumers' cycles from their start to their end
SLOTS = 8  # counters an SM has for cycles, and as many for counts
SM_IDS = 1024
# (anchor line in the rendered kernel, the wait's kind, a scalar the counter reads may depend on)
WAITS = [
    ("    mbarrier.wait(q_bar.index(slot), (t // SLOTS) & 1)\n", "q", "t"),
    ("    mbarrier.wait(k_ready.index(j0 % STAGES), (j0 // STAGES) & 1)\n", "first_k", "j0"),
    ("    mbarrier.wait(k_ready.index(nst), ((j + 1) // STAGES) & 1)\n", "k", "j"),
    ("    mbarrier.wait(v_ready.index(st), (j // STAGES) & 1)\n", "v", "j"),
    ("    mbarrier.wait(v_ready.index(st), (last // STAGES) & 1)\n", "v", "last"),
    ("    tma.store_wait(0)  # the last tile's output has left the staging tile (a tile of work ago)\n", "store", "b"),
]
CONSUMER = "\n\n@gluon.jit\ndef _consumer("
CONSUMER_END = "    tma.store_wait(0)\n\n\n@gluon.jit\ndef _consumer_tile("


class NotPatchable(ValueError):
    """The rendered kernel is not the Gluon kernel this script knows how to time."""


def counter_functions(address: int) -> str:
    """Gluon helpers: `_clock` reads the SM's cycle counter (its low 32 bits) after `dep`; `_count_<slot>` adds the
    cycles since t0 and one wait to the SM's counters at `address` (SLOTS cycle counters, then SLOTS counts, 8
    bytes each); `_busy_start` and `_busy_end` take the 64-bit cycle counter off the BUSY slot's counter and add it
    back, at a consumer's start and end, so that no value stays live across the consumer's loop (one more live
    register there made ptxas spill a few hundred times in the key loops)."""
    def add_to_counter(slot: int, amount: str, count: bool) -> str:
        """PTX: `amount` (PTX that leaves it in register d) added to this SM's counter for `slot`, and with `count`
        one to the slot's count, by the first thread of each warpgroup."""
        return ("{ .reg .pred p; .reg .u32 t, s; .reg .u64 a, c, d; mov.u32 t, %tid.x; and.b32 t, t, 127; "
                f"setp.eq.u32 p, t, 0; mov.u32 s, %smid; mul.wide.u32 a, s, {16 * SLOTS}; "
                f"add.u64 a, a, {address + 8 * slot}; {amount}@p red.global.add.u64 [a], d; "
                + (f"add.u64 c, a, {8 * SLOTS}; @p red.global.add.u64 [c], 1; " if count else "") + "mov.u32 $0, 0; }")

    # each helper: its signature, the value its PTX reads as $1, and the PTX
    adders = [("_busy_start(dep)", "dep", add_to_counter(BUSY, "mov.u64 d, %clock64; neg.s64 d, d; ", False)),
              ("_busy_end(dep)", "dep", add_to_counter(BUSY, "mov.u64 d, %clock64; ", False))]
    adders += [(f"_count_{slot}(t0, dep)", "_clock(dep) - t0", add_to_counter(slot, "cvt.u64.u32 d, $1; ", True))
               for slot in range(len(KINDS))]
    clock = ("\n\n@gluon.jit\ndef _clock(dep):\n"
             '    return gl.inline_asm_elementwise("mov.u32 $0, %clock;", "=r,r", [dep], dtype=gl.int32, is_pure=False,'
             " pack=1)\n")
    return clock + "".join(
        f"\n\n@gluon.jit\ndef {signature}:\n"
        f'    return gl.inline_asm_elementwise("{asm}", "=r,r", [{operand}], dtype=gl.int32, is_pure=False, pack=1)\n'
        for signature, operand, asm in adders)


def timed_source(source: str, address: int, kinds=KINDS) -> str:
    """The kernel's source with its consumer waits of `kinds` timed into the counters at `address`."""
    for anchor in [CONSUMER, CONSUMER_END] + [w[0] for w in WAITS]:
        if anchor not in source:
            raise NotPatchable(f"anchor not found: {anchor.strip().splitlines()[-1]!r}")
    for anchor, kind, dep in (w for w in WAITS if w[1] in kinds):
        indent = anchor[:len(anchor) - len(anchor.lstrip())]
        slot = KINDS.index(kind)
        source = source.replace(anchor, f"{indent}_t0 = _clock({dep})\n{anchor}{indent}_count_{slot}(_t0, {dep})\n")
    head, _, body = source.partition(CONSUMER)
    docstring, _, rest = body.partition('"""\n')  # the consumer's signature and docstring, then its body
    body = f'{docstring}"""\n    _busy_start(half)\n{rest}'
    body = body.replace(CONSUMER_END, "    tma.store_wait(0)\n    _busy_end(half)\n" + CONSUMER_END[
        len("    tma.store_wait(0)\n"):], 1)
    return head + counter_functions(address) + CONSUMER + body


def read_counters(counters: torch.Tensor) -> dict:
    """Cycles and waits of each kind summed over the SMs, each kind's share of the consumers' cycles."""
    totals = counters.view(-1, 2, SLOTS).sum(0).tolist()
    cycles, counts = totals[0], totals[1]
    busy = cycles[BUSY]
    return {"consumer_cycles": busy, "kinds": {
        kind: {"cycles": cycles[i], "waits": counts[i], "share": cycles[i] / busy if busy else None,
               "cycles_a_wait": cycles[i] / counts[i] if counts[i] else None} for i, kind in enumerate(KINDS)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a spec file")
    parser.add_argument("config", help='a Gluon config label, e.g. "BM128 BN128 w4 s2 gluon persistent"')
    parser.add_argument("--shape", default="2x16x8192x128", help="BxHxNxD")
    parser.add_argument("--calls", type=int, default=20, help="back to back, their waits summed")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="the waits to time, of " + ", ".join(KINDS) + " (each timed wait moves the compiled "
                             "code a little: fewer, less)")
    parser.add_argument("--out", type=Path, help="a JSON file for the results")
    args = parser.parse_args()
    spec, cfg, shape = load_spec(SpecFiles(args.spec)), KernelConfig.from_label(args.config), parse_shape(args.shape)
    kinds = args.kinds.split(",")
    if not cfg.gluon or not set(kinds) <= set(KINDS):
        parser.error(f"needs a Gluon config, and kinds of {', '.join(KINDS)}")
    q, k, v = (torch.randn(shape.batch, heads, shape.seq_len, shape.head_dim, device="cuda", dtype=torch.bfloat16)
               for heads in (shape.heads, shape.kv_heads, shape.kv_heads))
    buffers = {name: t.cuda() for name, t in spec.buffers.items()}
    # room for every SM id: %smid need not be below the SM count
    counters = torch.zeros(SM_IDS * 2 * SLOTS, dtype=torch.int64, device="cuda")
    source = render_kernel(spec.name, lower_spec(spec), cfg)
    with tempfile.TemporaryDirectory(prefix="kgen-wait-times-") as tmp:
        plain = load_module(source, Path(tmp)).attention
        timed = load_module(timed_source(source, counters.data_ptr(), kinds), Path(tmp)).attention
        expected = plain(q, k, v, **buffers)
        error = (timed(q, k, v, **buffers).float() - expected.float()).abs().max().item()
        plain_ms = ms_a_call(lambda: plain(q, k, v, **buffers), args.calls)
        counters.zero_()
        timed_ms = ms_a_call(lambda: timed(q, k, v, **buffers), args.calls)
        result = {"spec": spec.name, "shape": args.shape, "config": args.config, "calls": args.calls, "kinds": kinds,
                  "ms_a_call_timed": timed_ms, "ms_a_call_shipped": plain_ms, "max_abs_difference": error,
                  **read_counters(counters)}
    print(f"{spec.name} {args.shape} {args.config}: {timed_ms:.3f} ms a call timed, {plain_ms:.3f} as shipped "
          f"(outputs differ by {error:.2e} at most)")
    for kind, row in result["kinds"].items():
        if row["waits"]:
            print(f"  {kind:8s} {100 * row['share']:6.2f}% of the consumers' cycles, {row['waits']} waits, "
                  f"{row['cycles_a_wait']:.0f} cycles a wait")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
