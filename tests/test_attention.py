"""`kgen attention` end to end: the real CLI in a subprocess, a real HTTP server speaking the
chat-completions protocol on loopback, the real verifier running Triton's interpreter."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SPECS
from fake_openai import FakeOpenAI, drop, error, reply, slow
from kernels import flash_source

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DO-NOT-LEAK-1234567890"
SMALL = ["--batch", "2", "--heads", "2", "--seq-len", "48", "--head-dim", "16", "--device", "cpu"]


def fenced(source: str, prose: str = "Here is the kernel.") -> str:
    return f"{prose}\n\n```python\n{source}```\n"


GOOD = fenced(flash_source("rel_pos", bm=16, bn=16))
# scores without the relative-position bias: compiles and runs, but the numbers are wrong
WRONG = fenced(flash_source(None, bm=16, bn=16))


def kgen(args: list[str], server: FakeOpenAI | None, tmp_path: Path, timeout: float = 240, **popen):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    env.update(OPENAI_API_KEY=SECRET, PYTHONUNBUFFERED="1", KGEN_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "cli", "attention", "--score-mod", str(SPECS / "rel_pos.py"), *SMALL,
           "--runs-dir", str(tmp_path / "runs"), *args]
    if server is not None:
        cmd += ["--model", "fake-model", "--base-url", server.base_url]
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def the_run(tmp_path: Path) -> Path:
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def attempts(run: Path) -> list[dict]:
    return [json.loads((d / "attempt.json").read_text()) for d in sorted((run / "attempts").iterdir())]


def assert_no_secret(run: Path) -> None:
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


@pytest.fixture
def server():
    with FakeOpenAI(models=["fake-model"]) as s:
        yield s


def test_model_kernel_accepted_first_try(server, tmp_path):
    server.script(reply(GOOD))
    result = kgen(["--no-builtin", "--max-attempts", "1", "--samples", "1"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    run = the_run(tmp_path)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["verified"] == 1
    assert record["best"]["origin"] == "model"
    best = (run / "best" / "kernel.py").read_text()
    assert best.startswith("# kgen: verified attention kernel for spec `rel_pos`") and "def attention(" in best
    assert "# checked on q, k, v laid out contiguous, transposed ([B, S, H, D] memory) and as views into wider " \
           "memory (fused projections, a longer KV cache), at head_dim 16 with 1 query head(s) per key/value head, " \
           "shapes up to B2 H2 N48 D16\n" in best
    seed = json.loads((run / "attempts" / "0001" / "verdict.json").read_text())["seed"]  # fresh each time
    assert f"# its inputs drawn from seed {seed} (`kgen verify --seed {seed}` draws them again)\n" in best
    assert record["config"]["seed"] is None and any("fresh seed" in note for note in record["notes"])
    prompt = (run / "attempts" / "0001" / "prompt.md").read_text()
    assert prompt.count("===== ") == 2 and "===== system" in prompt and "===== user" in prompt
    chat_headers = [headers for path, headers, _ in server.requests if path.endswith("/chat/completions")]
    assert chat_headers[0]["authorization"] == f"Bearer {SECRET}"
    assert_no_secret(run)


def test_wrong_kernel_gets_the_mismatch_as_feedback_then_fixed(server, tmp_path):
    server.script(reply(WRONG), reply(GOOD))
    result = kgen(["--no-builtin", "--max-attempts", "2", "--samples", "1"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = attempts(the_run(tmp_path))
    assert first["status"] == "rejected" and second["status"] == "accepted"
    feedback = server.chat_requests[1]["messages"][-1]["content"]
    assert "REJECTED" in feedback and "wrong_output" in feedback and "max error" in feedback
    # the conversation carries the previous visible answer, which holds the previous kernel
    assert server.chat_requests[1]["messages"][-2] == {"role": "assistant", "content": WRONG.strip()} or \
        server.chat_requests[1]["messages"][-2]["content"].strip() == WRONG.strip()


def test_answer_without_code_gets_format_feedback(server, tmp_path):
    server.script(reply("I think you should use FlashAttention."), reply(GOOD))
    result = kgen(["--no-builtin", "--max-attempts", "2", "--samples", "1"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = attempts(the_run(tmp_path))
    assert first["status"] == "no_kernel" and second["status"] == "accepted"
    assert "no fenced code block" in server.chat_requests[1]["messages"][-1]["content"]


def test_truncated_answer_is_not_verified(server, tmp_path):
    cut = "```python\n" + flash_source("rel_pos")[:400]
    server.script(reply(cut, finish_reason="length"), reply(GOOD))
    result = kgen(["--no-builtin", "--max-attempts", "2", "--samples", "1"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    run = the_run(tmp_path)
    first = attempts(run)[0]
    assert first["status"] == "no_kernel" and "cut off" in first["candidate"]["format_error"]
    assert not (run / "attempts" / "0001" / "verdict.json").exists()


def test_rate_limits_are_retried_with_retry_after(server, tmp_path):
    server.script(error(429, retry_after=0.2), error(429, retry_after=0.2), reply(GOOD))
    result = kgen(["--no-builtin", "--max-attempts", "1", "--samples", "1"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(server.chat_requests) == 3
    assert attempts(the_run(tmp_path))[0]["candidate"]["answer"]["attempts"] == 3


def test_server_errors_end_the_lineage_and_the_run_says_so(server, tmp_path):
    server.script(*[error(500)] * 40)
    result = kgen(["--no-builtin", "--samples", "1", "--budget", "60s", "--request-attempts", "2"], server, tmp_path)
    assert result.returncode == 1
    run = the_run(tmp_path)
    statuses = {a["status"] for a in attempts(run)}
    assert statuses == {"failed"} and len(attempts(run)) == 3  # three failed requests end a lineage
    assert "500" in attempts(run)[0]["error"]
    assert len(server.chat_requests) == 6  # two tries each
    assert json.loads((run / "run.json").read_text())["stop_reason"] == "every proposer has finished"


def test_slow_answer_times_out_and_is_retried(server, tmp_path):
    server.script(slow(5.0, then=reply(GOOD)), reply(GOOD))
    result = kgen(["--no-builtin", "--max-attempts", "1", "--samples", "1", "--request-timeout", "1"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(server.chat_requests) == 2


def test_reasoning_is_recorded_but_never_sent_back(server, tmp_path):
    server.script(reply(WRONG, reasoning="Let me think about tiles..."), reply(GOOD))
    result = kgen(["--no-builtin", "--max-attempts", "2", "--samples", "1"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    run = the_run(tmp_path)
    assert (run / "attempts" / "0001" / "reasoning.md").read_text() == "Let me think about tiles..."
    sent = json.dumps(server.chat_requests[1])
    assert "Let me think" not in sent and "reasoning_content" not in sent


def test_unreachable_endpoint_is_a_config_error_in_seconds(tmp_path):
    started = time.monotonic()
    result = kgen(["--model", "m", "--base-url", "http://127.0.0.1:9/v1"], None, tmp_path)
    assert result.returncode == 2
    assert "cannot reach" in result.stderr and "--base-url" in result.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_refused_key_is_a_config_error(tmp_path):
    with FakeOpenAI(models=["fake-model"], api_key="another-key") as server:
        result = kgen([], server, tmp_path)
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr and "Traceback" not in result.stderr


def test_budget_is_honoured(server, tmp_path):
    server.script(*[slow(30.0, then=reply(GOOD))] * 4)
    started = time.monotonic()
    result = kgen(["--no-builtin", "--budget", "4s", "--request-timeout", "60"], server, tmp_path)
    took = time.monotonic() - started
    assert result.returncode == 1  # nothing verified within the budget
    assert took < 4 + 15, took  # interpreter start-up plus a few seconds of winding down
    record = json.loads((the_run(tmp_path) / "run.json").read_text())
    assert record["status"] == "finished" and record["stop_reason"] == "budget spent"


def test_sigterm_mid_run_leaves_a_consistent_run_directory(server, tmp_path):
    server.script(reply(GOOD), *[slow(60.0, then=reply(GOOD))] * 4)
    proc = kgen(["--no-builtin", "--samples", "1", "--budget", "5m"], server, tmp_path, popen=True)
    run = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the first attempt is on disk
        runs = list((tmp_path / "runs").glob("*/best/kernel.py")) if (tmp_path / "runs").exists() else []
        if runs:
            run = runs[0].parents[1]
            break
        time.sleep(0.2)
    assert run is not None, proc.communicate(timeout=5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr  # a verified kernel exists
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted"
    assert record["attempts"] == len(attempts(run)) == 1
    assert record["best"]["attempt"] == 1
    events = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert events[0] == "run_started" and events[-1] == "run_finished"
    assert_no_secret(run)


def test_builtin_seeds_the_model(server, tmp_path):
    server.script(reply(GOOD))
    result = kgen(["--samples", "1", "--max-attempts", "2"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    first_prompt = server.chat_requests[0]["messages"][1]["content"]
    assert "The kernel to beat" in first_prompt and "kgen built-in kernel" in first_prompt
    origins = [a["candidate"]["origin"] for a in attempts(the_run(tmp_path))]
    assert origins == ["builtin", "model"]


def test_offline_default_runs_the_builtin_alone(tmp_path):
    """As the README's first command does: no key, no GPU, a relative runs directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    result = subprocess.run([sys.executable, "-m", "cli", "attention", "--score-mod", str(SPECS / "rel_pos.py"),
                             *SMALL, "--runs-dir", "runs"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr
    assert "best kernel" in result.stdout and "--model" in result.stdout
    record = json.loads((the_run(tmp_path) / "run.json").read_text())
    assert record["stop_reason"] == "every proposer has finished" and record["best"]["origin"] == "builtin"


def test_dropped_connection_is_retried(server, tmp_path):
    server.script(drop(), reply(GOOD))
    result = kgen(["--no-builtin", "--max-attempts", "1", "--samples", "1"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(server.chat_requests) == 2


def test_a_stalled_lineage_restarts_from_the_best_kernel(server, tmp_path):
    """Two rejections in a row (--stall-after 2): the next prompt is a fresh conversation seeded with the best."""
    server.script(reply(GOOD), reply(WRONG), reply(WRONG), reply(GOOD))
    result = kgen(["--no-builtin", "--samples", "1", "--max-attempts", "4", "--stall-after", "2"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    sizes = [len(r["messages"]) for r in server.chat_requests]
    assert sizes == [2, 4, 4, 2]  # first prompt; feedback; feedback; restart (system + seeded first prompt)
    restart = server.chat_requests[3]["messages"][1]["content"]
    assert "The kernel to beat" in restart and "lineage 1 round 1" in restart


def test_lineages_ask_the_model_at_the_same_time(server, tmp_path):
    server.script(slow(2.0, then=reply(GOOD)), slow(2.0, then=reply(GOOD)))
    result = kgen(["--no-builtin", "--samples", "2", "--max-attempts", "2"], server, tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = attempts(the_run(tmp_path))
    assert {first["candidate"]["lineage"], second["candidate"]["lineage"]} == {1, 2}
    assert max(first["started_s"], second["started_s"]) < 1.5  # both asked before either answer came back


def test_budget_ending_mid_verification_kills_the_kernel_and_keeps_it(server, tmp_path):
    hang = flash_source("rel_pos", bm=16, bn=16).replace(
        "    m_i = tl.full", "    n = 0\n    while n >= 0:\n        n += 1\n    m_i = tl.full")
    server.script(reply(fenced(hang)), *[slow(60.0, then=reply(GOOD))] * 3)
    started = time.monotonic()
    result = kgen(["--no-builtin", "--samples", "1", "--budget", "8s", "--timeout", "120"], server, tmp_path)
    assert time.monotonic() - started < 8 + 20
    assert result.returncode == 1
    run = the_run(tmp_path)
    (only,) = attempts(run)
    assert only["status"] == "cancelled" and "budget ended while it was being judged" in only["error"]
    assert "while n >= 0" in (run / "attempts" / "0001" / "kernel.py").read_text()  # nothing lost
