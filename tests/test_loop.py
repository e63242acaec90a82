"""The search loop's threads: lineages never deliver events themselves, and the run does not return while a lineage
is between steps (a daemon thread caught writing to the console at interpreter exit aborts the process)."""
from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

from agent.loop import LEAVE_S, Search, SearchConfig
from agent.records import Candidate, RunRecord
from agent.rundir import RunDir


class Quick:
    """Answers at once, twice without a kernel, then has nothing left."""

    origin, lineage = "model", 1

    def __init__(self):
        self.left = 2

    def propose(self, context):
        self.left -= 1
        return Candidate(self.origin, self.lineage, "no kernel") if self.left >= 0 else None

    def observe(self, attempt):
        pass


class Stuck:
    """A model that never answers within the run."""

    origin, lineage = "model", 2

    def __init__(self):
        self.released = threading.Event()

    def propose(self, context):
        self.released.wait(60)
        return None

    def observe(self, attempt):
        pass


def a_search(tmp_path, proposers, budget_s, on_event):
    verifier = SimpleNamespace(options=SimpleNamespace(), problem=None, spec=None, density=None,
                               measured_baseline=None)
    record = RunRecord(id="r", command=[], problem={}, spec={}, config={}, environment={}, started_at="now")
    rundir = RunDir.create(tmp_path, "loop")
    return Search(verifier, rundir, record, proposers, SearchConfig(budget_s=budget_s), on_event), rundir


def test_events_reach_the_caller_on_its_own_thread_and_a_stuck_lineage_is_abandoned(tmp_path):
    seen = []
    stuck = Stuck()
    search, rundir = a_search(tmp_path, [Quick(), stuck], budget_s=1.0,
                              on_event=lambda kind, data: seen.append((kind, threading.current_thread())))
    started = time.monotonic()
    record = search.run()
    took = time.monotonic() - started
    stuck.released.set()
    kinds = [kind for kind, _ in seen]
    assert kinds[0] == "run_started" and kinds.count("attempt") == 2 and kinds[-1] == "finished", kinds
    assert {thread for _, thread in seen} == {threading.main_thread()}
    assert record.status == "finished" and record.stop_reason == "budget spent" and record.attempts == 2
    assert 1.0 <= took < 1.0 + LEAVE_S + 5.0, took  # not the stuck lineage's 60 s: LEAVE_S and a loaded machine's slack
    events = [json.loads(line)["event"] for line in (rundir.path / "events.jsonl").read_text().splitlines()]
    assert events[0] == "run_started" and events[-1] == "run_finished"


def test_lineages_between_steps_leave_before_the_run_returns(tmp_path):
    """A lineage writing down its attempt when the run ends finishes that and leaves: run() waits for it."""
    writing = threading.Event()

    class Slow(Quick):
        def observe(self, attempt):
            writing.set()
            time.sleep(0.5)  # still busy after the stop: the run must wait

    search, _ = a_search(tmp_path, [Slow()], budget_s=30.0, on_event=lambda kind, data: None)
    threading.Thread(target=lambda: (writing.wait(10), search.stop.set()), daemon=True).start()
    search.run()
    lineages = [t for t in threading.enumerate() if t.name == "lineage-1"]
    assert lineages == [], lineages
