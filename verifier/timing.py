"""Honest GPU timing, run inside the candidate's process (and the baseline's).

Per-call CUDA events on the caller's current stream (a non-default one), L2 flushed before every call,
inputs rotated over several fresh sets, warm-up first. A wall-clock measurement of a synchronised batch
cross-checks the events: work the events cannot see (another stream, the host) shows up there.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

L2_FLUSH_BYTES = 256 << 20  # larger than any current GPU's L2
WALL_SLACK_MS, WALL_FACTOR = 0.25, 1.5  # how far a synchronised wall clock may exceed the events per call
# Busy passes of the wall-clock cross-check at most. Two always run; more only while the wall clock disagrees
# with the events. Other processes' kernels on the GPU count in a device-wide synchronize: with three other test
# processes verifying on one H100, an honest 0.020 ms kernel measured 0.409 ms a call (thirty-seventh session) and
# 0.339 ms after six passes (fortieth). Their work comes and goes; work hidden from the events is in every pass, so
# more passes never clear it. From the third pass on, each busy pass follows a control pass (`_control_ms`).
WALL_PASSES_AT_MOST = 6
# The control's GPU work: a kernel that spins for a number of clock cycles, taken at import, before any candidate
# code runs (so that a candidate that replaces torch's function does not replace the control). CUDA builds only.
_SPIN_CYCLES = getattr(torch._C, "_cuda_sleep", None)


def wall_clock_agrees(events_ms: float, wall_ms: float) -> bool:
    """Whether a call's synchronised wall time leaves no room for work the events did not see (NaN, a wall clock
    not measured, makes no claim)."""
    return not wall_ms > WALL_FACTOR * events_ms + WALL_SLACK_MS


@dataclass
class Timing:
    ms: float  # median of per-call event times
    ms_min: float
    spread: float  # (p90 - p10) / median
    calls: int
    wall_ms: float  # per call, from a synchronised batch, flush time removed
    samples: list[float]

    def to_dict(self) -> dict:
        return {"ms": self.ms, "ms_min": self.ms_min, "spread": self.spread, "calls": self.calls,
                "wall_ms": self.wall_ms, "samples": [round(s, 5) for s in self.samples]}


def time_calls(call: Callable[[int], object], sets: int, target_s: float = 1.0, max_calls: int = 300,
               min_calls: int = 10, prepare: Callable[[int], object] | None = None, wall: bool = True) -> Timing:
    """Time `call(i)` (i picks an input set) on the current stream.

    `prepare(i)`, if given, runs before each timed call outside the timed region (the verifier gives the
    inputs new values there, so that nothing keyed on the inputs' identity can be replayed). `wall=False`
    skips the wall-clock cross-check (wall_ms is then NaN), for trusted code such as the benchmark's."""
    flush_buf = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    stream = torch.cuda.current_stream()

    def before(i: int):
        if prepare is not None:
            prepare(i)
        flush_buf.zero_()  # after the new values are written, so none of them waits in L2

    for i in range(3):  # warm-up: compilation, autotuning, caches of the wrapper
        call(i % sets)
    torch.cuda.synchronize()
    estimate = _one_call_ms(call, lambda: flush_buf.zero_())
    calls = int(min(max_calls, max(min_calls, target_s * 1000.0 / max(estimate, 1e-3))))

    events = _enqueue_timed(call, before, sets, calls, stream)
    torch.cuda.synchronize()
    samples = sorted(s.elapsed_time(e) for s, e in events)

    median = statistics.median(samples)
    wall_ms = float("nan")
    if wall:
        wall_calls = max(3, min(calls, 50))
        wall_ms = cross_checked_wall_ms(lambda: _wall_ms(lambda i: before(i % sets), wall_calls),
                                        lambda: _wall_ms(lambda i: (before(i % sets), call(i % sets)), wall_calls),
                                        median, lambda: _control_ms(lambda i: before(i % sets), median, wall_calls))
    p10, p90 = samples[len(samples) // 10], samples[(len(samples) * 9) // 10]
    return Timing(ms=median, ms_min=samples[0], spread=(p90 - p10) / median if median else 0.0, calls=calls,
                  wall_ms=wall_ms, samples=samples)


@dataclass
class Queued:
    """A call timed in two bursts of the same length from an idle GPU, so that the clock (which a long batch at the
    power cap lowers, and a burst from idle does not) is alike in both: a median of each."""
    one_by_one_ms: float  # the calls launched one after another, as time_calls launches them
    queued_ms: float  # the same calls all queued behind a spin first: the GPU's own time for a call

    @property
    def host_bound_by(self) -> float:
        """How much longer a call took launched one by one: the GPU's waits for the host, as a fraction."""
        return self.one_by_one_ms / self.queued_ms - 1.0 if self.queued_ms > 0 else 0.0


def time_queued(call: Callable[[int], object], sets: int, calls: int = 20) -> Queued | None:
    """`calls` calls of `call(i)` timed as time_calls times them (L2 flushed before each, CUDA events around it),
    once launched one after another and once queued behind a spin of the GPU that lasts until the host has launched
    them all, so that the GPU runs them back to back without waiting for the host. Where the first reads more, the
    call is host-bound: its launches come slower than its kernels run. Both bursts start from an idle GPU: compare
    them with each other, not with a long batch's figure, which runs at the lower clock of sustained load. None
    without a spin kernel (a CPU build), or where the host outlasted every spin tried (a call that synchronizes)."""
    if _SPIN_CYCLES is None:
        return None
    flush_buf = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    stream = torch.cuda.current_stream()

    def flush(i: int):
        flush_buf.zero_()

    for i in range(2):  # warm-up
        call(i % sets)
    cycles_per_ms = _spin_cycles_per_ms()
    one_by_one = _median_ms(_enqueue_timed(call, flush, sets, calls, stream))
    for spin_ms in (50.0, 200.0, 800.0):
        spin_start, spin_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        spin_start.record(stream)
        _SPIN_CYCLES(int(spin_ms * cycles_per_ms))
        spin_end.record(stream)
        launched = time.perf_counter()
        events = _enqueue_timed(call, flush, sets, calls, stream)
        host_ms = (time.perf_counter() - launched) * 1000.0
        queued = _median_ms(events)
        if host_ms < spin_start.elapsed_time(spin_end):  # every call was queued before the GPU reached the first
            return Queued(one_by_one_ms=one_by_one, queued_ms=queued)
    return None


def _median_ms(events: list[tuple[torch.cuda.Event, torch.cuda.Event]]) -> float:
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def _enqueue_timed(call: Callable[[int], object], before: Callable[[int], object], sets: int, calls: int,
                   stream) -> list[tuple[torch.cuda.Event, torch.cuda.Event]]:
    """Launch `calls` calls on `stream`, each after `before` and between two CUDA events (read them once the stream
    is synchronized): how time_calls and time_queued both time a call."""
    events = []
    for i in range(calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before(i % sets)
        start.record(stream)
        call(i % sets)
        end.record(stream)
        events.append((start, end))
    return events


def cross_checked_wall_ms(idle_pass: Callable[[], float], busy_pass: Callable[[], float], events_ms: float,
                          control_pass: Callable[[], tuple[float, float]] | None = None) -> float:
    """A call's wall time beyond the verifier's own work between calls: the lowest busy pass less the lowest idle
    one (each pass: ms a step, synchronised). Noise (the host, other processes) only adds time, and work hidden
    from the events is in every pass, so the lowest keeps the check. Two passes of each; then up to
    WALL_PASSES_AT_MOST busy passes while the result disagrees with `events_ms`, each after a control pass.

    A control pass (ms a step, and the control kernel's own ms by its events) steps as a busy pass does with a
    trusted kernel of the call's length in the call's place. What a step waits beyond that kernel's own time is
    what the GPU's other users cost a kernel launched there, and comes off the busy pass: work hidden from the
    events is the candidate's alone, and stays in. Busy last, so that the last outputs follow the last values."""
    idle = min(idle_pass() for _ in range(2))
    busy = min(busy_pass() for _ in range(2))
    shared = 0.0  # what other users of the GPU added to a kernel's step, by the lowest control pass
    control = float("inf")
    for _ in range(WALL_PASSES_AT_MOST - 2):
        if wall_clock_agrees(events_ms, max(busy - idle - shared, 0.0)):
            break
        if control_pass is not None:
            step_ms, kernel_ms = control_pass()
            control = min(control, step_ms - kernel_ms)
            shared = max(control - idle, 0.0)
        busy = min(busy, busy_pass())
    return max(busy - idle - shared, 0.0)


def _control_ms(before: Callable[[int], object], kernel_ms: float, n: int) -> tuple[float, float]:
    """A control pass for `cross_checked_wall_ms`: n synchronised steps of `before` and a spin of about kernel_ms
    on the current stream, timed by its events. Returns ms a step and the spin's median ms. With no spin kernel
    (a CPU build) the step is `before` alone, which removes nothing."""
    if _SPIN_CYCLES is None:
        return _wall_ms(before, n), 0.0
    cycles = int(kernel_ms * _spin_cycles_per_ms())
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]

    def step(i: int):
        before(i)
        starts[i].record()
        _SPIN_CYCLES(cycles)
        ends[i].record()

    step_ms = _wall_ms(step, n)
    return step_ms, statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def _spin_cycles_per_ms() -> float:
    """Clock cycles a millisecond of the spin kernel takes now (the clock moves with power and heat)."""
    cycles = 200_000
    # Loaded on its first launch, which must not be timed: the load would count as spinning, giving too few cycles a
    # millisecond and every spin sized from it too short, the likely reason the GPU test's spins all ended before
    # its host did (fifty-third session).
    _SPIN_CYCLES(1)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    _SPIN_CYCLES(cycles)
    end.record()
    end.synchronize()
    return cycles / max(start.elapsed_time(end), 1e-3)


def _one_call_ms(call, flush) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flush()
    start.record()
    call(0)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _wall_ms(step: Callable[[int], object], n: int) -> float:
    """Per-step wall time with a device-wide synchronize after each step: nothing can hide from it."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(n):
        step(i)
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000.0 / n


def matmul_peak_tflops(dtype: torch.dtype, n: int = 8192) -> float:
    """Measured dense matmul rate: the ceiling no attention kernel can beat."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 20
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2.0 * n ** 3 * reps / (start.elapsed_time(end) * 1e-3) / 1e12
