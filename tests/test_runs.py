"""`kgen runs list/show/plot/diff` on run directories made by a real search: the CLI, the built-in proposer
and a model behind a real HTTP server on loopback, the verifier running Triton's interpreter. Damaged
copies stand in for runs a crash left half-written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from fake_openai import FakeOpenAI, reply
from kernels import flash_source

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--batch", "2", "--heads", "2", "--seq-len", "48", "--head-dim", "16", "--device", "cpu"]
GOOD = f"Here it is.\n\n```python\n{flash_source('rel_pos', bm=16, bn=16)}```\n"
WRONG = f"Here it is.\n\n```python\n{flash_source(None, bm=16, bn=16)}```\n"  # no bias: wrong numbers


@pytest.fixture(scope="module")
def made(specs, tmp_path_factory) -> Path:
    """One real run: the built-in kernel (accepted), a model's wrong kernel (rejected), then its fix."""
    runs = tmp_path_factory.mktemp("made")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    env.update(OPENAI_API_KEY="sk-test", KGEN_CACHE_DIR=str(runs / "cache"))
    with FakeOpenAI(models=["fake-model"]) as server:
        server.script(reply(WRONG), reply(GOOD))
        result = subprocess.run([sys.executable, "-m", "cli", "attention", "--score-mod", str(specs / "rel_pos.py"),
                                 *SMALL, "--runs-dir", str(runs / "runs"), "--samples", "1", "--max-attempts", "3",
                                 "--model", "fake-model", "--base-url", server.base_url],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (run,) = (runs / "runs").iterdir()
    return run


@pytest.fixture
def copy(made, tmp_path):
    """A copy of the run in a runs directory of its own, for tests that damage it."""
    def make(name: str | None = None) -> Path:
        target = tmp_path / "runs" / (name or made.name)
        shutil.copytree(made, target)
        return target

    return make


def kgen(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def said(result) -> str:
    """Everything printed, stdout and stderr, with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_list_has_one_line_per_run_with_its_numbers(made):
    result = kgen("runs", "list", "--runs-dir", made.parent)
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stdout.splitlines() if made.name in line]
    assert line.split()[3:] == ["rel_pos", "fake-model", "10m", "3", "2", "untimed", "-", "finished"]
    assert line.split()[1] == made.name[:4] + "-" + made.name[4:6] + "-" + made.name[6:8]  # the date it ran


def test_list_json(made):
    result = kgen("runs", "list", "--runs-dir", made.parent, "--json")
    (run,) = json.loads(result.stdout)
    assert (run["name"], run["model"], run["attempts"], run["verified"], run["best_attempt"], run["status"]) == \
        (made.name, "fake-model", 3, 2, 1, "finished")
    assert run["problems"] == []


def test_show_tables_every_attempt(made):
    result = kgen("runs", "show", made.name[:10], "--runs-dir", made.parent)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])}
    assert "built-in" in rows["1"] and "accepted" in rows["1"]
    assert "fake-model" in rows["2"] and "rejected" in rows["2"] and "wrong_output" in rows["2"]
    assert "max error" in rows["2"]  # the verifier's one-line reason
    assert "fake-model" in rows["3"] and "accepted" in rows["3"] and "1 <#2" in rows["3"]  # lineage 1, refines #2
    assert "problem: B2 H2/2 Sq48 Skv48 D16 bf16 on cpu" in result.stdout
    for number, row in rows.items():  # each verification's seed, to repeat it with `kgen verify --seed`
        verdict = json.loads((made / "attempts" / f"{int(number):04d}" / "verdict.json").read_text())
        assert row.split()[-1] == str(verdict["seed"])
    assert f"best kernel: {made / 'best' / 'kernel.py'}" in result.stdout


def test_show_json_for_scripts(made):
    result = kgen("runs", "show", made, "--json")
    data = json.loads(result.stdout)
    attempts = data["attempts"]
    assert [a["status"] for a in attempts] == ["accepted", "rejected", "accepted"]
    assert [a["reason"] for a in attempts] == [None, "wrong_output", None]
    assert [a["proposer"] for a in attempts] == ["built-in", "fake-model", "fake-model"]
    assert [a["parent"] for a in attempts] == [None, None, 2]
    assert len({a["seed"] for a in attempts}) == 3 and all(isinstance(a["seed"], int) for a in attempts)
    assert all(a["elapsed_s"] > 0 for a in attempts) and attempts[0]["elapsed_s"] < attempts[2]["elapsed_s"]
    assert Path(data["best_kernel"]).read_text().startswith("# kgen: verified attention kernel")
    assert data["config"]["model"]["model"] == "fake-model" and data["problem"]["shape"]["seq_len"] == 48


def test_unknown_and_ambiguous_runs_are_usage_errors(made, copy):
    result = kgen("runs", "show", "nosuchrun", "--runs-dir", made.parent)
    assert result.exit_code == 2 and "no run named 'nosuchrun'" in said(result)
    runs_dir = copy().parent
    copy(made.name + "-2")
    result = kgen("runs", "show", made.name[:8], "--runs-dir", runs_dir)
    assert result.exit_code == 2 and "matches 2 runs" in said(result)
    for name in (made.name, made.name + "-2"):  # whole names, though the first is a prefix of the second
        shown = kgen("runs", "show", name, "--runs-dir", runs_dir)
        assert shown.exit_code == 0 and f"run {name}: finished" in shown.stdout


def test_plot_writes_a_png(made, tmp_path):
    from PIL import Image

    path = tmp_path / "search.png"
    result = kgen("runs", "plot", made, "-o", path)
    assert result.exit_code == 0, result.output
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
        assert image.size == (900, 500)


def test_timed_run_has_speeds_reference_lines_and_a_plot(copy, tmp_path):
    """A CPU run with the timings a GPU run records, to check what only GPU runs show."""
    run = copy()
    for number, tflops in ((1, 300.0), (3, 360.0)):
        path = run / "attempts" / f"{number:04d}" / "verdict.json"
        verdict = json.loads(path.read_text())
        verdict["metrics"].update(ms=1e3 / tflops, tflops=tflops, flex_tflops=350.0, ratio_to_flex=tflops / 350,
                                  sdpa_ms=2.0, flops=1e12)
        path.write_text(json.dumps(verdict))
    record = json.loads((run / "run.json").read_text())
    record["best"].update(attempt=3, tflops=360.0, ratio_to_flex=360 / 350)
    (run / "run.json").write_text(json.dumps(record))
    shown = kgen("runs", "show", run)
    assert "flex: 350.0 TFLOP/s; SDPA: 500.0 TFLOP/s" in shown.stdout
    assert any(line.split()[:2] == ["3", "*"] and "360.0" in line and "1.03x" in line
               for line in shown.stdout.splitlines())
    listed = kgen("runs", "list", "--runs-dir", run.parent)
    assert "360.0" in listed.stdout and "1.03x" in listed.stdout
    assert kgen("runs", "plot", run, "-o", tmp_path / "timed.png").exit_code == 0
    assert (tmp_path / "timed.png").read_bytes()[:4] == b"\x89PNG"


def test_diff_between_two_attempts(made):
    result = kgen("runs", "diff", made, "1", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == ["--- attempt 1", "+++ attempt 3"]
    assert any(line.startswith("-BLOCK_M") for line in lines)  # the built-in's config line
    assert any(line.startswith("+") and "_attn_fwd" in line for line in lines)  # the model's kernel
    same = kgen("runs", "diff", made, "1", "best")
    assert same.exit_code == 0 and same.stdout == "" and "same kernel" in said(same)


def test_diff_of_a_missing_attempt_is_a_usage_error(made):
    result = kgen("runs", "diff", made, "1", "7")
    assert result.exit_code == 2 and "no kernel for attempt 7" in said(result) and "1, 2, 3" in said(result)


def test_half_written_run_is_read_and_says_what_is_missing(copy, tmp_path):
    run = copy()
    (run / "run.json").unlink()
    events = (run / "events.jsonl").read_text()
    (run / "events.jsonl").write_text(events[:len(events) - 40])  # the last line cut off
    in_flight = run / "attempts" / "0004"
    in_flight.mkdir()
    shutil.copy(run / "attempts" / "0003" / "kernel.py", in_flight / "kernel.py")

    listed = kgen("runs", "list", "--runs-dir", run.parent)
    assert listed.exit_code == 0
    (line,) = [line for line in listed.stdout.splitlines() if line.split()[:1] == [run.name]]
    assert line.split()[3:] == ["rel_pos", "unknown", "-", "3", "2", "untimed", "-", "crashed", "(!)"]
    for expected in ("run.json is missing", "events.jsonl has 1 unreadable line", "attempt 0004 has no attempt.json"):
        assert expected in listed.stdout

    shown = kgen("runs", "show", run)
    assert shown.exit_code == 0
    assert "run " + run.name + ": crashed" in shown.stdout and "problem: unknown (run.json is missing)" in shown.stdout
    assert "attempt 0004 has no attempt.json: it was in flight" in shown.stdout
    assert "3 attempt(s), 2 verified" in shown.stdout  # what survived on disk
    assert kgen("runs", "plot", run, "-o", tmp_path / "crashed.png").exit_code == 0
    assert kgen("runs", "diff", run, "2", "3").exit_code == 0

    exported = kgen("export", run, "-o", tmp_path / "x.py")
    assert exported.exit_code == 2 and "no readable run.json" in said(exported)


def test_lost_best_and_dead_writer_are_reported(copy):
    run = copy()
    shutil.rmtree(run / "best")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = json.loads((run / "run.json").read_text())
    record.update(status="running", finished_at=None)
    record["environment"]["pid"] = dead.pid
    (run / "run.json").write_text(json.dumps(record))
    shown = kgen("runs", "show", run)
    assert shown.exit_code == 0
    assert f"run.json says running but its process (pid {dead.pid}) is gone" in shown.stdout
    assert "names attempt 1 as the best, but best/kernel.py is missing" in shown.stdout
    assert kgen("runs", "list", "--runs-dir", run.parent, "--json").stdout.count('"crashed"') == 1


def test_a_rejected_attempt_is_not_exported(made, tmp_path):
    result = kgen("export", made / "attempts" / "0002" / "kernel.py", "-o", tmp_path / "rejected.py")
    assert result.exit_code == 1 and "was not accepted (rejected: wrong_output)" in said(result)
    assert not (tmp_path / "rejected.py").exists()


def test_a_run_with_nothing_verified_has_nothing_to_export(copy, tmp_path):
    run = copy()
    shutil.rmtree(run / "best")
    record = json.loads((run / "run.json").read_text())
    record.update(best=None, verified=0)
    (run / "run.json").write_text(json.dumps(record))
    result = kgen("export", run, "-o", tmp_path / "none.py")
    assert result.exit_code == 1 and "no verified kernel to export" in said(result)


def test_a_folder_that_is_not_a_run_is_refused(made, tmp_path):
    (tmp_path / "cache").mkdir()
    result = kgen("runs", "show", tmp_path / "cache")
    assert result.exit_code == 2 and "is not a run directory" in said(result)
    shutil.copytree(made, tmp_path / made.name)
    listed = kgen("runs", "list", "--runs-dir", tmp_path, "--json")
    assert [r["name"] for r in json.loads(listed.stdout)] == [made.name]  # not the cache folder
