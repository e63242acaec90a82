"""Turns on one GPU for the verifier's work that other processes' work would spoil, among verifications in every
process on the machine (several `kgen` runs on one GPU, the GPU tests in several processes).

Two kinds of work take turns. Timing: another process's kernels running beside the timed calls inflate their times
and the wall clock that checks for hidden work (an honest 0.02 ms kernel was once rejected as `side_stream` that
way). Memory: the trial past the index limits has 4 GB inputs and output, and its call, its check and its
reference took 22-32 GB in a process (forty-seventh session, H100: 22 GB a candidate's, up to 32 a test
process's); three of those at once ran a fourth out of memory. Each takes the GPU's turn, so they run one at a
time while every lighter step runs side by side.

A turn is a file lock on a file named after the GPU's UUID, in the temporary folder, which every user may open
(the same for every process on the machine, whatever each sees as `cuda:0`). The operating system releases it when
its holder exits or is killed, so a hung candidate killed at its deadline leaves no turn held. A turn not had
within its timeout is gone ahead without, which is how the verifier worked before turns; a verdict's notes say
which turns it waited for (the baseline's in the verification that measured it: it is measured once per problem,
and cached only where it had every turn).
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

CHILD_WAITING = "waiting for the GPU's turn: "  # the phase a child reports while it waits, then what for
# where set, a file every turn is logged to when it ends, by every process (children get it through their job):
# "<end time> <pid> <seconds waited> <seconds held> <had it> <what>" lines, for a reader to see what held the GPU
LOG_VARIABLE = "KGEN_TURN_LOG"
WAIT_S = 1800.0  # longest a turn is waited for: other verifications' turns end at their own deadlines
POLL_S = 0.25  # how often a wait looks at its cancel event


class TurnCancelled(Exception):
    """The caller gave up the work (the run's budget ended, Ctrl-C) while it waited for the GPU's turn."""


@dataclass
class Wait:
    """One turn's wait: what it was for, the seconds waited, and whether the turn was had."""
    what: str
    seconds: float
    had: bool = True


def lock_path(device: str) -> str | None:
    """The turn file of the GPU that `device` names, or None off the GPU (no turns there)."""
    import torch

    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return str(Path(tempfile.gettempdir()) / f"kgen-gpu-{uuid or f'index{index}'}.lock")


class Turns:
    """The GPU's turns as one process takes them (a thread at a time too), and the waits they cost."""

    def __init__(self, path: str | None, wait_s: float = WAIT_S, log: str | None = None):
        self.path, self.wait_s = path, wait_s
        self.log = log or os.environ.get(LOG_VARIABLE)
        # thread_local: each thread holds its own file descriptor, so two threads of a process take turns as
        # two processes do (and a thread taking its own turn again nests)
        self._lock = FileLock(path, mode=0o666, thread_local=True) if path else None
        self._guard = threading.Lock()
        self.waits: list[Wait] = []
        self.waiting: str | None = None  # what a thread of this process is waiting for the turn for, if one is
        self.cancel: threading.Event | None = None  # set: a wait gives up (TurnCancelled)

    def job(self) -> dict:
        """What a child process needs in its job to take the same turns (`from_job` there)."""
        return {"turn_file": self.path, "turn_wait_s": self.wait_s, "turn_log": self.log}

    @classmethod
    def from_job(cls, job: dict) -> Turns:
        """The turns a parent's `job()` describes, in the child process (its environment is scrubbed)."""
        return cls(job.get("turn_file"), job.get("turn_wait_s", WAIT_S), job.get("turn_log"))

    @contextmanager
    def take(self, what: str) -> Iterator[Wait]:
        """Hold the GPU's turn for the block (at once off the GPU). Raises TurnCancelled if `cancel` is set while it
        waits."""
        wait = Wait(what, 0.0)
        if self._lock is None:
            yield wait
            return
        started = time.monotonic()
        self.waiting = what
        try:
            wait.had = self._acquire(started + self.wait_s)
        finally:
            self.waiting = None
        wait.seconds = time.monotonic() - started
        with self._guard:
            self.waits.append(wait)
        held = time.monotonic()
        try:
            yield wait
        finally:
            if wait.had:
                self._lock.release()
            self._write_log(wait, time.monotonic() - held)

    def _write_log(self, wait: Wait, held_s: float) -> None:
        if not self.log:
            return
        try:
            with open(self.log, "a") as log:  # one short append a line: lines from processes do not interleave
                log.write(f"{time.time():.3f} {os.getpid()} {wait.seconds:.3f} {held_s:.3f} {wait.had} {wait.what}\n")
        except OSError as e:  # a diagnostic: it must not fail the verification that took the turn
            warnings.warn(f"{LOG_VARIABLE}: cannot write the turn log {self.log} ({e}); turns go unlogged")
            self.log = None

    def _acquire(self, deadline: float) -> bool:
        """Whether the turn was had by `deadline`, waiting in slices so that a cancel is seen."""
        while True:
            try:
                self._lock.acquire(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
                return True
            except Timeout:
                if self.cancel is not None and self.cancel.is_set():
                    raise TurnCancelled() from None
                if time.monotonic() >= deadline:
                    return False
            except OSError:  # a turn file another user made, which this one cannot open
                return False

    def add(self, waits: list[Wait]) -> None:
        """Waits another process had on this one's behalf (a candidate's, reported on its channel)."""
        with self._guard:
            self.waits.extend(waits)

    def since(self, start: int) -> list[Wait]:
        """The waits recorded after the first `start` of them."""
        with self._guard:
            return self.waits[start:]


@contextmanager
def in_child(turns: Turns, channel, what: str) -> Iterator[Wait]:
    """`Turns.take` in a child process: while it waits the verifier's deadline is the turn's, not the work's (the
    caller says the work's phase once the turn is had)."""
    channel.phase(CHILD_WAITING + what, limit="turn")
    with turns.take(what) as wait:
        yield wait


def describe(waits: list[Wait], least_s: float = 0.5) -> str | None:
    """A verdict's note on the turns it waited for (None when none took `least_s` or went without)."""
    long = [w for w in waits if w.seconds >= least_s or not w.had]
    if not long:
        return None
    parts = [f"{w.what} {w.seconds:.1f} s" + ("" if w.had else " and went ahead without it") for w in long]
    return ("waited for the GPU's turn while other verifications used it: " + ", ".join(parts) +
            " (timing and the trial past the index limits run one verification at a time on a GPU)")
