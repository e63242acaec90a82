"""Run a test file's tests in several pytest processes at once, each its own share, and report them together.

The GPU tests (tests/test_gpu_verifier.py) take longer than one device call allows when run one after another,
and much of their time is compiling and checking on the host: several processes on one GPU overlap it. Each
shard collects the same tests and keeps its share, dealt round-robin in collection order (this module is also
the pytest plugin that deals them); each writes its log and JUnit file to --out, and each failure as it
happens to shardN.failures (pytest prints failures only at its end, which a device call's time limit may not let
it reach); the exit status is 0 only if every shard passed (or had nothing to run). The processes share the GPU's
memory too: their verifications take the GPU's turn for the trial past the index limits (4 GB tensors, which in
four processes ran others out of memory before turns) and for timing (verifier/gpu_turns.py; README, "Known
limits"), so a shard can wait for another's.

    python scripts/sharded_tests.py --shards 4 --out $OUT -- tests/test_gpu_verifier.py -p no:logging

With --only, this call runs some of the shards (`--shards 4 --only 0,1`, then `--only 2,3` in a later call):
a suite longer than one call, split over calls, each test in exactly one of them.

Each test's outcome is also written the moment it is known, to shardN.outcomes ("passed NODEID" lines), so a
shard cut off by a call's time limit still says which of its tests passed. --skip-passed FOLDER_OR_FILE (as
often as wanted) leaves out the tests that passed there and deals the rest: a later call runs only what an
earlier one did not reach or did not pass.

    python scripts/sharded_tests.py --shards 4 --skip-passed $EARLIER --out $OUT -- tests/test_gpu_verifier.py

Every GPU turn the shards' verifications take is logged to turns.log in --out, and the summary says how much of
the run's time the GPU's turn was held: near all of it, and more processes would only wait longer.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TURN_LOG_VARIABLE = "KGEN_TURN_LOG"  # verifier.gpu_turns.LOG_VARIABLE (not imported: the plugin stays light)
SHARD_VARIABLE = "KGEN_SHARD"
FAILURES_VARIABLE = "KGEN_SHARD_FAILURES"  # the file each failure is written to the moment it is known
OUTCOMES_VARIABLE = "KGEN_SHARD_OUTCOMES"  # the file each test's outcome is written to the moment it is known
SKIP_VARIABLE = "KGEN_SHARD_SKIP"  # a file of node ids (one a line) that passed before: left out before dealing


def pytest_collection_modifyitems(config, items):
    """As a pytest plugin (-p scripts.sharded_tests) in shard i of n (KGEN_SHARD="i/n"): keep every n-th test from
    the i-th, round-robin in collection order, so that each shard gets some of every parametrized family (their
    costs differ). The tests listed in KGEN_SHARD_SKIP's file (passed before) are left out first."""
    skip = os.environ.get(SKIP_VARIABLE)
    if skip:
        passed = set(Path(skip).read_text().splitlines())
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in passed])
        items[:] = [item for item in items if item.nodeid not in passed]
    shard = os.environ.get(SHARD_VARIABLE)
    if shard:
        i, n = map(int, shard.split("/"))
        keep = items[i::n]
        kept = {id(item) for item in keep}
        config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept])
        items[:] = keep


def pytest_runtest_logreport(report):
    """As the plugin: a failed test's (or its setup's) report, and each test's outcome, appended and flushed at
    once."""
    path = os.environ.get(FAILURES_VARIABLE)
    if path and report.failed:
        with open(path, "a") as failures:
            failures.write(f"==== {report.nodeid} ({report.when}) FAILED\n{report.longreprtext}\n\n")
    path = os.environ.get(OUTCOMES_VARIABLE)
    # a test's outcome: its call's, or its setup's where that failed or skipped it, or a failed teardown's
    if path and (report.when == "call" or report.outcome != "passed"):
        with open(path, "a") as outcomes:
            outcomes.write(f"{report.outcome} {report.nodeid}\n")


def read_outcomes(path: Path) -> list[tuple[str, str]]:
    """An outcomes file's (outcome, node id) pairs, in the order they were written."""
    return [tuple(line.split(" ", 1)) for line in path.read_text().splitlines() if " " in line]


def passed_before(sources: list[Path]) -> set[str]:
    """The node ids that passed in earlier runs' outcomes (folders of shardN.outcomes, or such files), and did
    not also fail there (a teardown that failed after its call passed)."""
    lines = [pair for source in sources
             for path in (sorted(source.glob("*.outcomes")) if source.is_dir() else [source])
             for pair in read_outcomes(path)]
    failed = {nodeid for outcome, nodeid in lines if outcome == "failed"}
    return {nodeid for outcome, nodeid in lines if outcome == "passed"} - failed


def turns_held(log: Path, seconds: float) -> str | None:
    """A line on how long the GPU's turn was held (turns had only: they never overlap) over a run of `seconds`."""
    fields = [line.split(" ", 5) for line in (log.read_text().splitlines() if log.exists() else [])]
    if not fields:
        return None
    held = [float(f[3]) for f in fields if len(f) == 6 and f[4] == "True"]
    without = sum(1 for f in fields if len(f) == 6 and f[4] != "True")
    return (f"the GPU's turn was held {sum(held):.0f} s of the {seconds:.0f} s run ({sum(held) / seconds:.0%}), "
            f"{len(held)} turns" + (f"; {without} went ahead without it" if without else "") + f": see {log}")


def totals(junit: Path) -> dict[str, int]:
    suite = ElementTree.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--only", help="comma-separated shard numbers to run (default: every shard)")
    parser.add_argument("--out", type=Path, required=True, help="folder for each shard's log and JUnit file")
    parser.add_argument("--skip-passed", type=Path, action="append", default=[], metavar="FOLDER_OR_FILE",
                        help="leave out the tests that passed in an earlier run's --out folder (or outcomes file)")
    parser.add_argument("pytest_args", nargs="+", help="after --: the test file(s) and pytest options")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error("--shards must be 1 or more")
    shards = [int(i) for i in args.only.split(",")] if args.only else list(range(args.shards))
    if not all(0 <= i < args.shards for i in shards):
        parser.error(f"--only: shard numbers run from 0 to {args.shards - 1}")
    missing = [str(path) for path in args.skip_passed if not path.exists()]
    if missing:
        parser.error(f"--skip-passed: no such folder or file: {', '.join(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    skip = args.out / "skipped-as-passed.txt"  # the node ids left out, for the plugin and for the reader
    skip.write_text("".join(f"{nodeid}\n" for nodeid in sorted(passed_before(args.skip_passed))))
    turn_log = args.out / "turns.log"
    turn_log.write_text("")
    started = time.monotonic()
    running = []
    for i in shards:
        log = open(args.out / f"shard{i}.log", "w")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "scripts.sharded_tests",
                   f"--junitxml={args.out / f'shard{i}.xml'}", *args.pytest_args]
        for kind in ("failures", "outcomes"):
            (args.out / f"shard{i}.{kind}").write_text("")
        env = {**os.environ, SHARD_VARIABLE: f"{i}/{args.shards}", SKIP_VARIABLE: str(skip),
               FAILURES_VARIABLE: str(args.out / f"shard{i}.failures"),
               OUTCOMES_VARIABLE: str(args.out / f"shard{i}.outcomes"), TURN_LOG_VARIABLE: str(turn_log)}
        running.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    for process, log in running:
        codes.append(process.wait())
        log.close()
    held = turns_held(turn_log, time.monotonic() - started)
    if held:
        print(held)
    summed: dict[str, int] = {}
    stopped = [i for i in shards if not (args.out / f"shard{i}.xml").exists()]
    for i in stopped:
        reached = [outcome for outcome, _ in read_outcomes(args.out / f"shard{i}.outcomes")]
        print(f"shard {i} stopped before its report, {reached.count('passed')} passed and "
              f"{reached.count('failed')} failed by then: see shard{i}.outcomes, shard{i}.failures and shard{i}.log")
    for i in shards:
        if i in stopped:
            continue
        for key, n in totals(args.out / f"shard{i}.xml").items():
            summed[key] = summed.get(key, 0) + n
    print(f"{len(running)} shard(s): " + ", ".join(f"{n} {key}" for key, n in summed.items() if key != "tests")
          + f" of {summed.get('tests', 0)}; exit codes {codes}; logs in {args.out}")
    return 0 if all(code in (0, 5) for code in codes) and not stopped else 1


if __name__ == "__main__":
    sys.exit(main())
