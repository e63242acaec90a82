"""The generate–verify loop: propose → verify → record → feed back, until the budget ends.

Each proposer is a lineage running in its own thread (model requests take minutes, so N of them are in
flight at once); candidates are judged one at a time by the verifier (GPU timing never overlaps), and every
finished attempt is written to the run directory before anything else happens. Events reach `on_event` on the
thread that called `run()`: a lineage never writes to the console, so none is caught mid-write when the process
exits with a lineage still waiting on its model (a daemon thread that holds stderr's lock at interpreter exit
aborts the process).
"""
from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from agent.llm import ConfigError, LLMError
from agent.proposers import Proposer, SearchContext
from agent.records import ACCEPTED, CANCELLED, FAILED, NO_KERNEL, REJECTED, Attempt, Candidate, RunRecord, describe_speed
from agent.rundir import RunDir, utc_now
from verifier.compiled import describe as describe_compiled
from verifier.suite import LAYOUTS, Trial
from verifier.verify import Cancelled, Verifier

MAX_PROPOSER_FAILURES = 3  # consecutive model failures (after the client's own retries) end a lineage
WIND_DOWN_S = 15.0  # at the end, how long to wait for a killed verification to be written down
LEAVE_S = 2.0  # at the end, how long lineages get to leave; one still waiting on its model is abandoned


@dataclass
class SearchConfig:
    budget_s: float = 600.0  # stop starting work after this long
    max_attempts: int | None = None  # stop after this many attempts (None: budget only)


class Search:
    def __init__(self, verifier: Verifier, rundir: RunDir, record: RunRecord, proposers: list[Proposer],
                 config: SearchConfig, on_event: Callable[[str, dict], None] | None = None):
        self.verifier, self.rundir, self.record = verifier, rundir, record
        self.proposers, self.config = proposers, config
        self.on_event = on_event or (lambda kind, data: None)
        self.events: queue.SimpleQueue[tuple[str, dict]] = queue.SimpleQueue()  # for run()'s thread to deliver
        self.stop = threading.Event()  # no new work
        self.cancel = threading.Event()  # abandon the candidate being judged
        verifier.options.cancel = self.cancel
        self.lock = threading.Lock()  # attempt numbers, the record, the best
        self.verify_lock = threading.Lock()  # one candidate judged at a time
        self.seed_ready = threading.Event()  # model lineages wait for the built-in's first kernel
        self.best: Attempt | None = None
        self.started = time.monotonic()
        self.fatal: Exception | None = None
        self.next_number = 1

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> RunRecord:
        """Run until the budget is spent, every proposer is exhausted, or the caller interrupts."""
        self.started = time.monotonic()
        self._emit("run_started", budget_s=self.config.budget_s, lineages=len(self.proposers))
        if not any(p.origin == "builtin" for p in self.proposers):
            self.seed_ready.set()
        threads = [threading.Thread(target=self._lineage, args=(p,), daemon=True, name=f"lineage-{p.lineage}")
                   for p in self.proposers]
        for t in threads:
            t.start()
        status = "finished"
        try:
            while any(t.is_alive() for t in threads) and not self.stop.is_set():
                if self.elapsed() >= self.config.budget_s:
                    self.record.stop_reason = "budget spent"
                    break
                self._deliver_events()
                time.sleep(0.1)
            else:
                self.record.stop_reason = self.record.stop_reason or "every proposer has finished"
        except KeyboardInterrupt:
            status, self.record.stop_reason = "interrupted", "interrupted (Ctrl-C or SIGTERM)"
        finally:
            self.stop.set()
            self.cancel.set()  # a verification in flight is killed; model requests in flight are abandoned
            if self.verify_lock.acquire(timeout=WIND_DOWN_S):  # the killed candidate is recorded under the lock
                self.verify_lock.release()
            _join(threads, LEAVE_S)
            if self.fatal is not None:
                status, self.record.stop_reason = "failed", str(self.fatal)
            self._finish(status)
            self._deliver_events()
        return self.record

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -------------------------------------------------------------------------------------------- lineage
    def _lineage(self, proposer: Proposer) -> None:
        try:
            self._refine(proposer)
        except Exception as e:  # noqa: BLE001 - a bug in kgen: end the run and say so, never hang
            self.fatal = RuntimeError(f"internal error in lineage {proposer.lineage}: "
                                      f"{''.join(traceback.format_exception(e))}")
            self.stop.set()
        finally:
            if proposer.origin == "builtin":
                self.seed_ready.set()  # never leave the model lineages waiting

    def _refine(self, proposer: Proposer) -> None:
        failures = 0
        if proposer.origin == "model":
            self.seed_ready.wait()
        while not self.stop.is_set():
            began = self.elapsed()
            try:
                candidate = proposer.propose(self._context())
            except ConfigError as e:  # the endpoint refuses us: no lineage can go on
                self.fatal = e
                self.stop.set()
                return
            except LLMError as e:
                failures += 1
                self._record(Attempt(self._number(), Candidate(proposer.origin, proposer.lineage, "request failed"),
                                     FAILED, began, self.elapsed(), error=str(e)))
                if failures >= MAX_PROPOSER_FAILURES:
                    return
                continue
            failures = 0
            if candidate is None:  # nothing left to try
                break
            if self.stop.is_set():
                break  # an answer that arrived after the budget: not judged
            attempt = self._judge(candidate, began)
            if attempt.status == CANCELLED:
                break
            proposer.observe(attempt)
            if proposer.origin == "builtin":
                self.seed_ready.set()

    def _judge(self, candidate: Candidate, began: float) -> Attempt:
        number = self._number()
        if candidate.source is None:
            return self._record(Attempt(number, candidate, NO_KERNEL, began, self.elapsed()))
        self._emit("attempt_started", number=number, label=candidate.label, origin=candidate.origin)
        with self.verify_lock:
            if self.stop.is_set():
                return self._record(Attempt(number, candidate, CANCELLED, began, self.elapsed(),
                                            error="the budget ended before it was judged"))
            try:
                verdict = self.verifier.verify(candidate.source, workdir=self.rundir.attempt_dir(number) / "verify")
            except Cancelled:
                return self._record(Attempt(number, candidate, CANCELLED, began, self.elapsed(),
                                            error="the budget ended while it was being judged"))
        status = ACCEPTED if verdict.accepted else REJECTED
        return self._record(Attempt(number, candidate, status, began, self.elapsed(), verdict=verdict))

    def _number(self) -> int:
        with self.lock:
            number, self.next_number = self.next_number, self.next_number + 1
            return number

    def _context(self) -> SearchContext:
        with self.lock:
            best = self.best
        return SearchContext(problem=self.verifier.problem, spec=self.verifier.spec, gpu=_gpu_name(),
                             density=self.verifier.density, best=best)

    # --------------------------------------------------------------------------------------------- record
    def _record(self, attempt: Attempt) -> Attempt:
        """Write the attempt, then update the record and the best kernel: disk first, always."""
        with self.lock:
            self.rundir.write_attempt(attempt)
            self.record.attempts += 1
            self.record.verified += attempt.status == ACCEPTED
            improved = attempt.status == ACCEPTED and _faster(attempt, self.best)
            if improved:
                self.best = attempt
                self._write_best(attempt)
            self.rundir.write_record(self.record)
            self.rundir.event("attempt_finished", number=attempt.number, lineage=attempt.candidate.lineage,
                              origin=attempt.candidate.origin, label=attempt.candidate.label, status=attempt.status,
                              reason=attempt.verdict.reason if attempt.verdict else None,
                              ms=attempt.ms, tflops=attempt.verdict.metrics.tflops if attempt.verdict else None,
                              elapsed_s=round(attempt.finished_s, 2), best=improved)
            if self.config.max_attempts and self.record.attempts >= self.config.max_attempts:
                self.record.stop_reason = f"{self.config.max_attempts} attempts made"
                self.stop.set()
        self.events.put(("attempt", {"attempt": attempt, "best": improved, "record": self.record}))
        return attempt

    def _write_best(self, attempt: Attempt) -> None:
        m = attempt.verdict.metrics
        problem = self.verifier.problem
        path = self.rundir.write_best(attempt, best_header(self.record.id, self.verifier, attempt), {
            "run": self.record.id, "attempt": attempt.number, "label": attempt.candidate.label,
            "origin": attempt.candidate.origin, "problem": problem.to_dict(), "spec": self.verifier.spec.describe(),
            "verdict": attempt.verdict.to_dict()})
        self.record.best = {"attempt": attempt.number, "label": attempt.candidate.label,
                            "origin": attempt.candidate.origin, "ms": m.ms, "tflops": m.tflops,
                            "ratio_to_flex": m.ratio_to_flex, "path": str(path)}

    def _finish(self, status: str) -> None:
        with self.lock:
            self.record.status = status
            self.record.finished_at = utc_now()
            baseline = self.verifier.measured_baseline
            if baseline is not None:
                self.record.baseline = asdict(baseline)
            self.rundir.write_record(self.record)
            self.rundir.event("run_finished", status=status, stop_reason=self.record.stop_reason,
                              attempts=self.record.attempts, verified=self.record.verified, best=self.record.best)
        self.events.put(("finished", {"record": self.record}))

    def _emit(self, kind: str, **data) -> None:
        self.rundir.event(kind, **data)
        self.events.put((kind, data))

    def _deliver_events(self) -> None:
        while True:
            try:
                kind, data = self.events.get_nowait()
            except queue.Empty:
                return
            self.on_event(kind, data)


def _join(threads: list[threading.Thread], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def _faster(attempt: Attempt, best: Attempt | None) -> bool:
    """Untimed (CPU) kernels keep the first accepted one; timed ones compare medians."""
    if best is None:
        return True
    return attempt.ms is not None and (best.ms is None or attempt.ms < best.ms)


def best_header(run_id: str, verifier: Verifier, attempt: Attempt) -> str:
    problem, m = verifier.problem, attempt.verdict.metrics
    lines = [f"kgen: verified attention kernel for spec `{verifier.spec.name}`",
             f"run {run_id}, attempt {attempt.number} ({attempt.candidate.origin}: {attempt.candidate.label})",
             f"problem: {problem.shape.label()} {problem.dtype} on {problem.device}"
             + (f" ({_gpu_name()})" if problem.device == "cuda" else ""),
             f"measured: {describe_speed(attempt.verdict)}"]
    if m.launches_per_call is not None:
        lines.append(f"{m.launches_per_call} kernel launch(es) per call; "
                     f"{(m.extra_memory_bytes or 0) / 2**20:.2f} MiB extra memory per call")
        lines += [f"compiled {describe_compiled(k)}" for k in m.compiled]
    top = verifier.suite[0].shape  # the suite's largest (capped on a CPU)
    lines += [f"max error {m.max_error:.3g} over the verifier's suite" if m.max_error is not None else "",
              # what the suite varies and what it does not: `kgen export` guards the rest, this file does not
              f"checked on q, k, v laid out {layouts_tried(verifier.suite)}, at head_dim {top.head_dim} with "
              f"{top.group} query head(s) per key/value head, shapes up to {top.label()}",
              _past_limits_tried(verifier.suite),
              _seed_line(attempt.verdict.seed),
              "contract: attention(q, k, v, *, scale=None, **buffers) -> o"]
    return "".join(f"# {line}\n" for line in lines if line)


def _seed_line(seed: int | None) -> str:
    """How to repeat the accepted verification (a verdict of an older run has no seed)."""
    return "" if seed is None else f"its inputs drawn from seed {seed} (`kgen verify --seed {seed}` draws them again)"


def _past_limits_tried(suite: list[Trial]) -> str:
    past = next((t for t in suite if t.sample), None)  # (verifier.past_limits: the one sampled trial)
    return "" if past is None else (f"and past the index limits, at {past.shape.label()} (more than 65535 batch x "
                                    f"heads, more than 2**31 elements), its output compared at {len(past.sample)} "
                                    f"heads and at every row through a random projection")


def layouts_tried(suite: list[Trial]) -> str:
    """The memory layouts of the suite's trials, in words: "contiguous, ... and ..." """
    words = [LAYOUTS[name] for name in dict.fromkeys(t.layout for t in suite)]
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]


def _gpu_name() -> str | None:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None
