"""`kgen verify` as a person runs it: exit codes 0 / 1 / 2, --json, and spec errors without a traceback."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import flash_source, kernel_file

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--batch", "2", "--heads", "2", "--seq-len", "64", "--head-dim", "32", "--device", "cpu"]


def kgen(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("kgen")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps at the terminal width; keep messages on one line
    return subprocess.run(command + [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def kernel(tmp_path):
    def write(source: str, name: str = "kernel.py") -> Path:
        path = tmp_path / name
        path.write_text(source)
        return path

    return write


def test_accepted_kernel_exits_0_with_json(specs, kernel):
    result = kgen("verify", kernel(flash_source(mask="causal")), "--mask-mod", specs / "causal.py", *SMALL, "--json",
                  "--seed", "12345")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "inputs drawn from seed 12345 (--seed 12345 draws the same ones again)" in report["verdict"]["notes"]
    assert report["verdict"]["accepted"] is True and report["verdict"]["reason"] is None
    assert report["problem"]["device"] == "cpu" and report["spec"]["mask_mod"] is True
    assert [s["stage"] for s in report["verdict"]["stages"]] == ["static", "run", "integrity", "numerics"]


def test_rejected_kernel_exits_1(specs, kernel):
    path = kernel(kernel_file("host_matmul.py"))
    result = kgen("verify", path, "--score-mod", specs / "noop.py", *SMALL, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["verdict"]["reason"] == "forbidden_call"
    plain = kgen("verify", path, *SMALL)
    assert plain.returncode == 1
    assert "REJECTED" in plain.stdout and "forbidden_call" in plain.stdout and "torch" in plain.stdout
    seeds = [re.search(r"inputs drawn from seed (\d+)", text).group(1) for text in (result.stdout, plain.stdout)]
    assert seeds[0] != seeds[1]  # a fresh seed each time, named


def test_rejected_at_run_time_exits_1(kernel):
    result = kgen("verify", kernel(flash_source(variant="no_max")), *SMALL, "--json")
    assert result.returncode == 1
    verdict = json.loads(result.stdout)["verdict"]
    assert verdict["reason"] == "nan_output" and verdict["stages"][-1]["details"]["trials"]


SPEC_ERRORS = {
    "syntax error": ("def score_mod(score, b, h, q_idx, kv_idx):\n    return score +\n", "has a syntax error"),
    "wrong arity": ("def mask_mod(q_idx, kv_idx):\n    return q_idx >= kv_idx\n", "takes 2 arguments"),
    "captured list": ("W = [1]\n\n\ndef mask_mod(b, h, q_idx, kv_idx):\n    return q_idx - kv_idx < W[0]\n",
                      "a list"),
    "python if": ("def mask_mod(b, h, q_idx, kv_idx):\n    return q_idx if q_idx > kv_idx else kv_idx\n",
                  "failed when evaluated on index tensors"),
}


@pytest.mark.parametrize("name", list(SPEC_ERRORS))
def test_bad_spec_exits_2_with_one_paragraph(kernel, tmp_path, name):
    text, expected = SPEC_ERRORS[name]
    spec = tmp_path / "spec.py"
    spec.write_text(text)
    result = kgen("verify", kernel(flash_source()), "--score-mod", spec, *SMALL)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert expected in output and str(spec) in output
    assert result.stderr.strip().startswith("error:") and "\n\n" not in result.stderr.strip()


@pytest.mark.parametrize("args, expected", [
    (["--score-mod", "/nonexistent/spec.py"], "does not exist"),
    (["--dtype", "fp32"], "--dtype fp32 is not supported"),
    (["--heads", "3", "--kv-heads", "2"], "not a multiple of --kv-heads"),
], ids=["missing spec", "dtype", "gqa heads"])
def test_usage_errors_exit_2(kernel, args, expected):
    result = kgen("verify", kernel(flash_source()), *SMALL, *args)
    assert result.returncode == 2
    assert expected in " ".join(result.stderr.split()) and "Traceback" not in result.stdout + result.stderr


def test_missing_kernel_file_exits_2(tmp_path):
    result = kgen("verify", tmp_path / "absent.py", *SMALL)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
