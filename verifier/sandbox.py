"""Run the candidate in a child process the verifier can always take back.

The child gets a scrubbed environment (no keys or tokens), its own process group (so a hang is killed
with everything it started), and reports on a pipe the verifier owns: phases, records and errors as JSON
lines. Its stdout and stderr go to files, since a kernel may print anything there.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KEEP_ENV = re.compile(r"^(PATH|HOME|USER|LOGNAME|LANG|LC_\w+|TZ|TMPDIR|TERM|PYTHONPATH|PYTHONHASHSEED|VIRTUAL_ENV|"
                      r"LD_LIBRARY_PATH|CUDA_\w+|NVIDIA_\w+|TRITON_\w+|CC|CXX|XDG_CACHE_HOME|TORCH_HOME|"
                      r"TORCHINDUCTOR_\w+|OMP_NUM_THREADS|MKL_\w+|OPENBLAS_\w+|NCCL_\w+|TORCH_\w+|PYTORCH_\w+)$")
SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASS|CREDENTIAL|AUTH|COOKIE|SESSION", re.IGNORECASE)
TAIL_BYTES = 4000


@dataclass
class Limits:
    compile_s: float = 300.0  # interpreter start, imports and the first call (where Triton compiles)
    call_s: float = 60.0  # every later call or timing batch


@dataclass
class ChildResult:
    status: str  # ok | error | crash | timeout | cancelled
    phase: str = ""  # the last phase the child reported
    error: dict | None = None  # the child's own report: code, type, message, traceback
    records: list[dict] = field(default_factory=list)
    returncode: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    seconds: float = 0.0
    leftover_processes: bool = False  # the child left processes running after it exited


def scrubbed_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if KEEP_ENV.match(k) and not SECRET_ENV.search(k)}
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                               if p])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run_child(job: dict, workdir: Path, limits: Limits, env_extra: dict[str, str] | None = None,
              cancel: threading.Event | None = None, module: str = "verifier.child") -> ChildResult:
    """Run `python -m <module>` on `job` in `workdir`; never raises for what the child does."""
    workdir.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    job = {**job, "channel_fd": write_fd}
    job_path = workdir / "job.json"
    job_path.write_text(json.dumps(job, indent=1))
    started = time.monotonic()
    with open(workdir / "child.stdout", "wb") as out, open(workdir / "child.stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", module, str(job_path)], cwd=workdir, stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL, env=scrubbed_env(env_extra or {}),
                                pass_fds=(write_fd,), start_new_session=True)
    os.close(write_fd)
    result = _follow(proc, os.fdopen(read_fd, "rb", buffering=0), limits, cancel)
    result.seconds = time.monotonic() - started
    result.returncode = proc.returncode
    result.stdout_tail = _tail(workdir / "child.stdout")
    result.stderr_tail = _tail(workdir / "child.stderr")
    return result


def _follow(proc: subprocess.Popen, channel, limits: Limits, cancel) -> ChildResult:
    result = ChildResult(status="crash", phase="start")
    deadline = time.monotonic() + limits.compile_s
    selector = selectors.DefaultSelector()
    selector.register(channel, selectors.EVENT_READ)
    buffer, done = b"", False
    try:
        while True:
            if cancel is not None and cancel.is_set():
                result.status = "cancelled"
                break
            if time.monotonic() > deadline:
                result.status = "timeout"
                break
            ready = selector.select(timeout=0.2)
            chunk = channel.read(1 << 16) if ready else None
            if chunk == b"" or (chunk is None and proc.poll() is not None and not selector.select(timeout=0)):
                break  # the child closed its end or exited
            if not chunk:
                continue
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                message = _parse(line)
                kind = message.get("kind")
                if kind == "phase":
                    result.phase = message["phase"]
                    budget = limits.compile_s if message.get("limit") == "compile" else limits.call_s
                    deadline = time.monotonic() + budget * message.get("scale", 1.0)
                elif kind == "record":
                    result.records.append(message["data"])
                elif kind == "error":
                    result.error = message["data"]
                elif kind == "done":
                    done = True
    finally:
        selector.close()
        channel.close()
    if result.status in ("timeout", "cancelled"):
        _kill_group(proc)
        return result
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    result.leftover_processes = _kill_group(proc)
    if done and proc.returncode == 0:
        result.status = "ok"
    elif result.error is not None:
        result.status = "error"
    return result


def _parse(line: bytes) -> dict:
    try:
        message = json.loads(line)
        return message if isinstance(message, dict) else {}
    except ValueError:
        return {}


def _kill_group(proc: subprocess.Popen) -> bool:
    """Kill the child's whole process group; True if anything besides the child was still in it."""
    leftover = False
    if proc.poll() is not None:
        try:
            os.killpg(proc.pid, 0)
            leftover = True  # the child is gone but something it started is not
        except (ProcessLookupError, PermissionError):
            return False
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return leftover


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
        return ("..." if size > TAIL_BYTES else "") + text
    except OSError:
        return ""


def describe_signal(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"
