"""Kernels under sustained load: each runs back to back for some seconds while nvidia-smi samples the board's SM
clock and power (CUDA). Under the H100's 700 W cap the clock a kernel runs at depends on the kernel, so a time
alone does not say whether one kernel does more work a cycle than another: this prints both, and cycles a call.

    python benchmarks/sustained.py examples/specs/key_padding.py --config "BM128 BN128 w4 s2 gluon persistent" \\
        --flash --shape 2x16x8192x128 --out sustained.json

`--flash` adds FlashAttention-4 through flex's FLASH backend (needs flash-attn-4), `--sdpa` PyTorch's SDPA (where it
computes the spec: plain or causal attention). Kernels alternate, `--reps` runs each; the first third of a run
(clock and power settling) is left out of its figures. Each run also says why the clock was held below its maximum,
as the driver reports it (the power cap, a thermal limit, ...), in what share of its samples.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench import parse_shape  # noqa: E402
from benchmarks.run_kernel import builtin_attention  # noqa: E402
from verifier.baseline import flex_call, sdpa_kind  # noqa: E402
from verifier.reference import buffers_on  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402

CALLS_BETWEEN_EVENTS = 20  # calls timed together: back to back, as a model's layers run
SAMPLE_MS = 100  # nvidia-smi's sampling period
# the driver's reasons for holding the clock down (NVML's clocks event reasons), by bit
CLOCK_REASONS = {0x1: "idle", 0x2: "applications clocks", 0x4: "power cap", 0x8: "hardware slowdown",
                 0x10: "sync boost", 0x20: "thermal (software)", 0x40: "thermal (hardware)", 0x80: "power brake",
                 0x100: "display clock"}
REASON_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")  # the newer name, the older


@dataclass
class Run:
    kernel: str
    rep: int
    ms: float  # median time a call
    mhz: float  # mean SM clock
    watts: float  # mean board power
    reasons: dict[str, float]  # why the clock was held down: share of the samples naming each reason

    @property
    def kilocycles(self) -> float:
        """Cycles a call at the run's mean clock, in thousands."""
        return self.ms * self.mhz


def settled(values: list) -> list:
    """The last two thirds of a run's values: the first third is the clock and power settling."""
    return values[len(values) // 3:]


def parse_samples(text: str) -> list[tuple[float, float, int]]:
    """nvidia-smi's `--query-gpu=clocks.sm,power.draw[,REASONS] --format=csv,noheader,nounits` lines as (MHz, W,
    the reasons' bitmask; 0 where the line has none)."""
    samples = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) in (2, 3) and all(f.replace(".", "", 1).isdigit() for f in fields[:2]):
            reasons = int(fields[2], 16) if len(fields) == 3 and fields[2].lower().startswith("0x") else 0
            samples.append((float(fields[0]), float(fields[1]), reasons))
    return samples


def summarize(kernel: str, rep: int, call_ms: list[float], samples: list[tuple[float, float, int]]) -> Run:
    if not call_ms or not samples:
        raise RuntimeError(f"{kernel}: no {'times' if not call_ms else 'nvidia-smi samples'} in the run")
    clocks, watts, masks = zip(*settled(samples))  # (a third of a non-empty list leaves some)
    reasons = {name: round(sum(bool(m & bit) for m in masks) / len(masks), 2) for bit, name in CLOCK_REASONS.items()}
    return Run(kernel, rep, round(statistics.median(settled(call_ms)), 4),
               round(statistics.mean(clocks)), round(statistics.mean(watts)), {n: r for n, r in reasons.items() if r})


def reasons_field() -> str | None:
    """The name this driver's nvidia-smi gives the clock's reasons (None: it has neither)."""
    for field in REASON_FIELDS:
        probe = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True)
        if probe.returncode == 0:
            return field
    return None


def ms_a_call(call, calls: int) -> float:
    """Milliseconds a call, `calls` back to back between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def run_for(kernel: str, rep: int, call, seconds: float, reasons: str | None) -> Run:
    """`call` back to back for `seconds`, nvidia-smi sampling the board meanwhile (`reasons`: its field for why
    the clock is held down, if any)."""
    query = ",".join(["clocks.sm", "power.draw"] + [reasons] * bool(reasons))
    smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits",
                            "-lms", str(SAMPLE_MS)], stdout=subprocess.PIPE, text=True)
    call_ms, started = [], time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            call_ms.append(ms_a_call(call, CALLS_BETWEEN_EVENTS))
    finally:
        smi.terminate()
    return summarize(kernel, rep, call_ms, parse_samples(smi.communicate()[0]))


def kernels(args, spec, shape, sdpa: str | None, workdir: Path) -> dict:
    """The kernels to run, by name: the built-in configs', FlashAttention-4's, SDPA's (`sdpa`: its kind)."""
    found = {f"kgen {label}": builtin_attention(spec, label, workdir) for label in args.config}
    if args.flash:
        found["FlashAttention-4"] = flex_call(spec, shape, "flash")
    if sdpa:
        found["SDPA"] = lambda q, k, v, **_: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=sdpa == "causal")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a spec file (score_mod and/or mask_mod)")
    parser.add_argument("--config", action="append", default=[], help="a built-in config label (repeatable)")
    parser.add_argument("--flash", action="store_true", help="FlashAttention-4 through flex")
    parser.add_argument("--sdpa", action="store_true", help="PyTorch's SDPA (where it computes the spec)")
    parser.add_argument("--shape", default="2x16x8192x128", help="BxHxNxD")
    parser.add_argument("--seconds", type=float, default=3.0, help="each run's length")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", help="write the runs here as JSON")
    args = parser.parse_args()
    if not (args.config or args.flash or args.sdpa):
        parser.error("name a kernel: --config LABEL, --flash or --sdpa")
    spec = load_spec(SpecFiles(args.spec))
    shape = parse_shape(args.shape)
    if shape.kv_heads != shape.heads:
        parser.error("this runs without GQA: give the shape as BxHxNxD")
    sdpa = sdpa_kind(spec, shape) if args.sdpa else None
    if args.sdpa and not sdpa:
        parser.error(f"SDPA does not compute {spec.name}: --sdpa takes plain or causal attention")
    if not torch.cuda.is_available():
        parser.error("this runs kernels on a CUDA GPU, which this machine does not have")
    if shutil.which("nvidia-smi") is None:
        parser.error("nvidia-smi, which samples the clock and power, is not on the PATH")
    dims = (shape.batch, shape.heads, shape.seq_len, shape.head_dim)
    q, k, v = (torch.randn(*dims, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    buffers = {name: t.cuda() for name, t in spec.buffers.items()}
    runs = []
    with tempfile.TemporaryDirectory(prefix="kgen-sustained-") as tmp, buffers_on(spec, buffers):
        found = kernels(args, spec, shape, sdpa, Path(tmp))
        for attention in found.values():  # compiled before any run
            attention(q, k, v, **buffers)
        torch.cuda.synchronize()
        reasons = reasons_field()
        for rep in range(args.reps):
            for name, attention in found.items():
                run = run_for(name, rep, lambda: attention(q, k, v, **buffers), args.seconds, reasons)
                runs.append(run)
                held = ", ".join(f"{n} {share:.0%}" for n, share in run.reasons.items()) or "none reported"
                print(f"{name}, run {rep + 1}: {run.ms:.4f} ms a call at {run.mhz:.0f} MHz, {run.watts:.0f} W, "
                      f"{run.kilocycles:.0f} thousand cycles; clock held down by: {held}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                                              "spec": spec.name, "shape": args.shape, "seconds": args.seconds,
                                              "runs": [asdict(r) | {"kilocycles": r.kilocycles} for r in runs]},
                                             indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
