"""Turns on the GPU among verifications in several processes (verifier/gpu_turns.py): real file locks held by
real processes, which the operating system takes back from a killed one. The GPU's own turn file is named by its
UUID; here a file in the test's folder stands in for it (the CPU has no turns)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

from verifier.gpu_turns import TurnCancelled, Turns, Wait, describe, lock_path

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.interpreter_free  # real locks and processes, no kernel: they run on the GPU machine too


def holder(path: Path, hold_s: float, log: Path | None = None) -> subprocess.Popen:
    """A process that takes the turn, says "held" on stdout, holds it `hold_s`, and appends its interval to `log`."""
    code = textwrap.dedent(f"""
        import sys, time
        from verifier.gpu_turns import Turns
        with Turns({str(path)!r}).take("holding") as wait:
            start = time.time()
            print("held", flush=True)
            time.sleep({hold_s})
            end = time.time()
        if {str(log) if log else None!r}:
            with open({str(log)!r}, "a") as f:
                f.write(f"{{start}} {{end}} {{wait.had}}\\n")
    """)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return process


def wait_until_held(process: subprocess.Popen) -> None:
    assert process.stdout.readline().strip() == "held"


@contextmanager
def held_elsewhere(path: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the turn for the block (and then killed, if it is not already)."""
    process = holder(path, 600.0)
    try:
        wait_until_held(process)
        yield process
    finally:
        process.kill()
        process.wait(timeout=60)


def test_two_processes_take_the_turn_one_after_the_other(tmp_path):
    lock, log = tmp_path / "gpu.lock", tmp_path / "intervals"
    processes = [holder(lock, 1.0, log) for _ in range(2)]
    for p in processes:
        assert p.wait(timeout=60) == 0
    (s1, e1, had1), (s2, e2, had2) = sorted(tuple(line.split()) for line in log.read_text().splitlines())
    assert had1 == had2 == "True"
    assert float(e1) <= float(s2)  # the second held it only once the first let go


def test_a_killed_holder_leaves_no_turn_held(tmp_path):
    """A hung candidate is killed at its deadline: whoever waits gets the turn then, not at the turn's timeout."""
    lock = tmp_path / "gpu.lock"
    with held_elsewhere(lock) as process:
        threading.Timer(1.0, process.kill).start()
        with Turns(str(lock), wait_s=60.0).take("after the kill") as wait:
            assert wait.had and 0.5 < wait.seconds < 30.0


def test_a_turn_not_had_in_time_is_gone_ahead_without_and_the_note_and_the_log_say_so(tmp_path):
    lock, log = tmp_path / "gpu.lock", tmp_path / "turns.log"
    with held_elsewhere(lock):
        turns = Turns(str(lock), wait_s=0.5, log=str(log))
        with turns.take("timing") as wait:
            assert not wait.had and 0.5 <= wait.seconds < 10.0
    assert turns.waits == [wait]
    note = describe(turns.waits)
    assert note.startswith("waited for the GPU's turn") and "timing 0." in note
    assert "went ahead without it" in note
    [line] = log.read_text().splitlines()
    assert line.split(" ", 5)[4:] == ["False", "timing"]
    from scripts.sharded_tests import turns_held
    assert "0 turns; 1 went ahead without it" in turns_held(log, 1.0)


def test_a_turn_log_that_cannot_be_written_warns_and_the_turns_go_on(tmp_path):
    turns = Turns(str(tmp_path / "gpu.lock"), log=str(tmp_path / "no such folder" / "turns.log"))
    with pytest.warns(UserWarning, match="cannot write the turn log"):
        with turns.take("timing") as wait:
            assert wait.had
    with turns.take("timing again") as wait:  # warned once, then unlogged
        assert wait.had
    assert [w.what for w in turns.waits] == ["timing", "timing again"]


def test_what_a_process_waits_for_is_known_while_it_waits(tmp_path):
    """For the live status line of `kgen attention` (verifier.Verifier.waiting_for_turn)."""
    lock = tmp_path / "gpu.lock"
    process = holder(lock, 1.5)
    wait_until_held(process)
    turns, seen = Turns(str(lock)), set()
    def take():
        with turns.take("timing"):
            pass
    waiting = threading.Thread(target=take)
    waiting.start()
    while waiting.is_alive():
        seen.add(turns.waiting)
        time.sleep(0.02)
    assert "timing" in seen and turns.waiting is None and turns.waits[0].had
    process.wait(timeout=60)


def test_a_wait_given_up_by_the_caller_ends_at_once(tmp_path):
    """The run's budget ends, or Ctrl-C: a verification waiting for a turn another process holds stops waiting."""
    lock = tmp_path / "gpu.lock"
    with held_elsewhere(lock):
        turns = Turns(str(lock))
        turns.cancel = threading.Event()
        threading.Timer(0.5, turns.cancel.set).start()
        started = time.monotonic()
        with pytest.raises(TurnCancelled):
            with turns.take("timing"):
                pass
        assert time.monotonic() - started < 5.0 and turns.waiting is None and turns.waits == []


def test_threads_of_one_process_take_turns_and_one_thread_may_take_its_own_again(tmp_path):
    turns = Turns(str(tmp_path / "gpu.lock"))
    intervals = []

    def hold():
        with turns.take("a thread"):
            with turns.take("the same thread again"):  # nested: no deadlock on itself
                start = time.monotonic()
                time.sleep(0.3)
                intervals.append((start, time.monotonic()))
    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    intervals.sort()
    assert len(intervals) == 3 and all(a[1] <= b[0] for a, b in zip(intervals, intervals[1:]))
    assert len(turns.waits) == 6 and all(w.had for w in turns.waits)


def test_short_waits_go_unsaid_and_off_the_gpu_there_are_no_turns():
    assert describe([Wait("timing", 0.01), Wait("the reference of t12", 0.2)]) is None
    note = describe([Wait("timing", 0.01), Wait("the trial past the index limits (t12)", 7.25)])
    assert "the trial past the index limits (t12) 7.2 s" in note and "timing 0.0 s" not in note
    assert lock_path("cpu") is None
    turns = Turns(None)
    with turns.take("timing") as wait:
        assert wait.had and wait.seconds == 0.0
    assert turns.waits == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_every_process_names_the_gpus_turn_by_its_uuid():
    """Processes may see one GPU under different indices (CUDA_VISIBLE_DEVICES): its UUID is the same in each."""
    path = lock_path("cuda")
    assert path == lock_path("cuda:0") and str(torch.cuda.get_device_properties(0).uuid) in Path(path).name
