"""Run the candidate in a child process the verifier can always take back.

The child gets a scrubbed environment (no keys or tokens), its own process group (so a hang is killed
with everything it started), and reports on a pipe the verifier owns: phases, records and errors as JSON
lines. Its stdout and stderr go to files, since a kernel may print anything there.
"""
from __future__ import annotations

import atexit
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

from verifier.gpu_turns import WAIT_S

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
    turn_s: float = WAIT_S + 60.0  # waiting for the GPU's turn (verifier.gpu_turns), which gives up at WAIT_S


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


_LIVE: set["Child"] = set()  # children not yet closed: killed if the verifier itself exits first


@atexit.register
def _kill_live_children() -> None:
    for child in list(_LIVE):
        _kill_group(child.proc)


def run_child(job: dict, workdir: Path, limits: Limits, env_extra: dict[str, str] | None = None,
              cancel: threading.Event | None = None, module: str = "verifier.child") -> ChildResult:
    """Run `python -m <module>` on `job` in `workdir` to the end; never raises for what the child does."""
    child = Child(job, workdir, limits, env_extra, cancel, module)
    child.follow()
    return child.close()


class Child:
    """A sandboxed child process the verifier can follow up to a message, then command to go on.

    Two pipes, both owned by the verifier: JSON lines from the child (phases, records, errors) and command
    lines to it. While the child waits for a command no deadline runs: the verifier is the one working.
    """

    def __init__(self, job: dict, workdir: Path, limits: Limits, env_extra: dict[str, str] | None = None,
                 cancel: threading.Event | None = None, module: str = "verifier.child"):
        workdir = Path(workdir).resolve()  # the child runs inside it: every path it is given must be absolute
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.limits, self.cancel = workdir, limits, cancel
        read_fd, write_fd = os.pipe()
        command_read, command_write = os.pipe()
        job = {**job, "channel_fd": write_fd, "command_fd": command_read}
        job_path = workdir / "job.json"
        job_path.write_text(json.dumps(job, indent=1))
        self.started = time.monotonic()
        with open(workdir / "child.stdout", "wb") as out, open(workdir / "child.stderr", "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", module, str(job_path)], cwd=workdir, stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL, env=scrubbed_env(env_extra or {}),
                                         pass_fds=(write_fd, command_read), start_new_session=True)
        _LIVE.add(self)
        os.close(write_fd)
        os.close(command_read)
        self.channel = os.fdopen(read_fd, "rb", buffering=0)
        self.commands = os.fdopen(command_write, "w", buffering=1)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.channel, selectors.EVENT_READ)
        self.result = ChildResult(status="running", phase="start")
        self.deadline = time.monotonic() + limits.compile_s
        self.buffer, self.done = b"", False

    def follow(self, until: str | None = None) -> ChildResult:
        """Read the child's messages until one of kind `until` arrives, or the child ends."""
        while self.result.status == "running":
            if self.cancel is not None and self.cancel.is_set():
                self.result.status = "cancelled"
            elif time.monotonic() > self.deadline:
                self.result.status = "timeout"
            elif self._read() is False:
                self._ended()
            elif self._take(until) and until is not None:
                break
        if self.result.status in ("timeout", "cancelled"):
            _kill_group(self.proc)
            self._collect()
        self.result.seconds = time.monotonic() - self.started
        return self.result

    def send(self, command: str) -> None:
        """Tell a waiting child what to do next; its next phase message sets the deadline again."""
        self.deadline = time.monotonic() + self.limits.call_s
        try:
            self.commands.write(command + "\n")
            self.commands.flush()
        except (BrokenPipeError, OSError):
            pass  # it is gone already; follow() will say how

    def close(self) -> ChildResult:
        """End the child (if it has not ended), collect its output tails, and return the result."""
        if self.result.status == "running":  # abandoned mid-way (the verifier raised): it goes now
            _kill_group(self.proc)
            self.result.status = "cancelled"
        for f in (self.channel, self.commands):
            try:
                f.close()
            except OSError:
                pass
        self.selector.close()
        self._collect()
        _LIVE.discard(self)
        return self.result

    def _collect(self) -> None:
        self.result.seconds = time.monotonic() - self.started
        self.result.returncode = self.proc.returncode
        self.result.stdout_tail = _tail(self.workdir / "child.stdout")
        self.result.stderr_tail = _tail(self.workdir / "child.stderr")

    def _read(self) -> bool | None:
        """Take in what the child wrote; False once it has closed its end or exited."""
        ready = self.selector.select(timeout=0.2)
        chunk = self.channel.read(1 << 16) if ready else None
        if chunk == b"" or (chunk is None and self.proc.poll() is not None and not self.selector.select(timeout=0)):
            return False
        if chunk:
            self.buffer += chunk
        return None

    def _take(self, until: str | None) -> bool:
        """Handle every complete line; True if one of them was of kind `until`."""
        *lines, self.buffer = self.buffer.split(b"\n")
        found = False
        for line in lines:
            message = _parse(line)
            kind = message.get("kind")
            if kind == "phase":
                self.result.phase = message["phase"]
                budget = {"compile": self.limits.compile_s, "turn": self.limits.turn_s}.get(message.get("limit"),
                                                                                            self.limits.call_s)
                self.deadline = time.monotonic() + budget * message.get("scale", 1.0)
            elif kind == "record":
                self.result.records.append(message["data"])
            elif kind == "error":
                self.result.error = message["data"]
            elif kind == "done":
                self.done = True
            found |= kind == until
        return found

    def _ended(self) -> None:
        self._take(None)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.result.leftover_processes = _kill_group(self.proc)
        self._collect()
        if self.done and self.proc.returncode == 0:
            self.result.status = "ok"
        elif self.result.error is not None:
            self.result.status = "error"
        else:
            self.result.status = "crash"


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
