"""The timing stage's wall-clock cross-check on a GPU that other processes keep busy, with and without its control
pass (verifier.timing.cross_checked_wall_ms), side by side in one run.

An honest short call (SDPA, about 0.02 ms) and the same call with hidden work beside it (an 8192-square matmul,
about 1.5 ms, on a private stream the caller's stream never waits for) are each cross-checked while
--load-processes other processes run matmuls back to back, then again with the GPU to themselves. The honest
call must agree with its events in every setting, and the hidden work never wherever the events missed it. Run
it alone on the GPU: it starts its own load.

    python tools/wall_clock_under_load.py --load-processes 3 --reps 3 --out wall.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verifier import timing  # noqa: E402

STEPS = 50  # synchronised steps a pass, as the verifier runs for calls of this length
LOAD = ("import time, torch\n"
        "a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)\n"
        "end = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end:\n"
        "    for _ in range(20):\n"
        "        a @ a\n"
        "    torch.cuda.synchronize()\n")


def calls() -> dict[str, Callable[[], object]]:
    """The honest call and the one that hides a matmul from the caller's stream."""
    q, k, v = (torch.randn(2, 8, 1024, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()

    def honest():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def hidden():
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            a @ a
        return honest()

    return {"honest": honest, "hidden": hidden}


def cross_check(call, with_control: bool) -> dict:
    """The events' median ms a call, then the cross-checked wall ms a call, as the verifier's timing computes
    them (L2 flushed before every call), with or without the control pass."""
    events_ms = timing.time_calls(lambda i: call(), 1, target_s=0.3, wall=False).ms
    flush = torch.empty(timing.L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")

    def before(i):
        flush.zero_()

    wall_ms = timing.cross_checked_wall_ms(
        lambda: timing._wall_ms(before, STEPS), lambda: timing._wall_ms(lambda i: (before(i), call()), STEPS),
        events_ms, (lambda: timing._control_ms(before, events_ms, STEPS)) if with_control else None)
    return {"events_ms": round(events_ms, 4), "wall_ms": round(wall_ms, 4),
            "agrees": timing.wall_clock_agrees(events_ms, wall_ms)}


def measure(reps: int) -> list[dict]:
    rows = []
    for name, call in calls().items():
        for rep in range(reps):
            for with_control in (False, True):
                rows.append({"call": name, "control": with_control, "rep": rep, **cross_check(call, with_control)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-processes", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=120.0, help="how long the load runs at most")
    parser.add_argument("--out", default="wall-clock-under-load.json")
    args = parser.parse_args()
    torch.cuda.init()
    results = {"gpu": torch.cuda.get_device_name()}
    load = [subprocess.Popen([sys.executable, "-c", LOAD.format(seconds=args.load_seconds)])
            for _ in range(args.load_processes)]
    try:
        time.sleep(8.0)  # their CUDA contexts up and their matmuls running
        results["loaded"] = measure(args.reps)
    finally:
        for process in load:
            process.kill()
            process.wait()
    results["alone"] = measure(args.reps)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"{results['gpu']}: {args.load_processes} load processes, then alone")
    print("| setting | call | control pass | events ms | wall ms | agrees |")
    print("|---|---|---|---|---|---|")
    for setting in ("loaded", "alone"):
        for r in results[setting]:
            print(f"| {setting} | {r['call']} | {'yes' if r['control'] else 'no'} | {r['events_ms']} | {r['wall_ms']} "
                  f"| {r['agrees']} |")
    honest_ok, caught, missed = judge(results["loaded"] + results["alone"])
    print(f"honest call agrees with its events, with the control pass, everywhere: {honest_ok}; hidden work caught in "
          f"{caught} of the {missed} measurements whose events missed it (in the others SDPA waited behind the matmul, "
          f"and the events took in its time)")
    return 0 if honest_ok and caught == missed else 1


def judge(rows: list[dict]) -> tuple[bool, int, int]:
    """Whether every honest measurement with the control pass agreed with its events; and of the hidden work's
    measurements whose events missed it, how many the check caught, and how many there were."""
    honest_ok = all(r["agrees"] for r in rows if r["call"] == "honest" and r["control"])
    missed = [r for r in rows if r["call"] == "hidden" and hidden_from_the_events(r)]
    return honest_ok, sum(not r["agrees"] for r in missed), len(missed)


def hidden_from_the_events(row: dict) -> bool:
    """Whether the events missed the hidden matmul. They do not always: when it holds every SM, the caller's next
    kernel waits for it, and the events take in its time."""
    return row["events_ms"] < 0.5 * row["wall_ms"]


if __name__ == "__main__":
    sys.exit(main())
