"""The run directory: the only code that knows its layout.

    runs/<UTC time>-<spec>/
        run.json                 RunRecord, rewritten after every attempt (atomically)
        events.jsonl             append-only, one JSON object a line, flushed per event
        attempts/NNNN/           attempt.json, prompt.md, answer.md, reasoning.md, kernel.py, verdict.json,
                                 verify/ (the sandbox's job files and the kernel's stdout/stderr)
        best/kernel.py           the fastest verified kernel, standalone, with a header comment
        best/report.json         its verdict, problem and spec

Everything finished is on disk as soon as it finishes, so a crash loses nothing but the work in flight.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from agent.records import Attempt, RunRecord

RECORD, EVENTS, ATTEMPTS, BEST = "run.json", "events.jsonl", "attempts", "best"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, runs_dir: Path, spec_name: str) -> "RunDir":
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        base = Path(runs_dir) / f"{stamp}-{spec_name}"
        path, n = base, 1
        while True:
            try:
                path.mkdir(parents=True)
                break
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")
        (path / ATTEMPTS).mkdir()
        return cls(path)

    @property
    def id(self) -> str:
        return self.path.name

    def attempt_dir(self, number: int) -> Path:
        return self.path / ATTEMPTS / f"{number:04d}"

    def write_record(self, record: RunRecord) -> None:
        _write_atomic(self.path / RECORD, json.dumps(record.to_dict(), indent=2, default=str))

    def event(self, kind: str, **fields) -> None:
        line = json.dumps({"time": utc_now(), "event": kind, **fields}, default=str)
        with open(self.path / EVENTS, "a") as f:
            f.write(line + "\n")
            f.flush()

    def write_attempt(self, attempt: Attempt) -> Path:
        folder = self.attempt_dir(attempt.number)
        folder.mkdir(parents=True, exist_ok=True)
        c = attempt.candidate
        if c.messages:
            (folder / "prompt.md").write_text(_messages_markdown(c.messages))
        if c.answer is not None:
            (folder / "answer.md").write_text(c.answer.content)
            if c.answer.reasoning:
                (folder / "reasoning.md").write_text(c.answer.reasoning)
        if c.source:
            (folder / "kernel.py").write_text(c.source)
        if attempt.verdict is not None:
            _write_atomic(folder / "verdict.json", json.dumps(attempt.verdict.to_dict(), indent=2, default=str))
        meta = attempt.to_dict()
        meta["candidate"] = {k: v for k, v in meta["candidate"].items() if k not in ("source", "messages")}
        if c.answer is not None:
            meta["candidate"]["answer"] = {k: v for k, v in meta["candidate"]["answer"].items()
                                           if k not in ("content", "reasoning")}
        meta.pop("verdict", None)
        _write_atomic(folder / "attempt.json", json.dumps(meta, indent=2, default=str))
        return folder

    def write_best(self, attempt: Attempt, header: str, report: dict) -> Path:
        folder = self.path / BEST
        folder.mkdir(exist_ok=True)
        _write_atomic(folder / "kernel.py", header + attempt.candidate.source)
        _write_atomic(folder / "report.json", json.dumps(report, indent=2, default=str))
        return folder / "kernel.py"


def _write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _messages_markdown(messages: list[dict]) -> str:
    return "\n\n".join(f"===== {m['role']} =====\n\n{m['content']}" for m in messages) + "\n"


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class RunView:
    """A run as read back from disk; `problems` lists what is missing or unreadable."""

    path: Path
    record: dict
    attempts: list[dict] = field(default_factory=list)  # attempt.json, with "verdict" and "dir" added
    events: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        if not self.record:
            return "crashed"  # died before its first record
        status = self.record.get("status", "unknown")
        if status == "running" and not _alive(self.record.get("environment", {}).get("pid")):
            return "crashed"  # nobody is writing it any more
        return status

    @property
    def started_at(self) -> str:
        """ISO time the run started; from the folder's name when run.json is gone."""
        if self.record.get("started_at"):
            return self.record["started_at"]
        try:
            stamp = datetime.strptime(self.name[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
        except ValueError:
            return ""
        return stamp.isoformat(timespec="seconds")

    @property
    def spec_name(self) -> str:
        return self.record.get("spec", {}).get("name") or self.name[16:] or "?"

    @property
    def best_kernel(self) -> Path | None:
        """best/kernel.py of this directory (run.json's path may name the machine the run was made on)."""
        path = self.path / BEST / "kernel.py"
        return path if path.is_file() else None

    @property
    def best_report(self) -> dict:
        return _read_json(self.path / BEST / "report.json", {})

    def attempt(self, number: int) -> dict | None:
        return next((a for a in self.attempts if a.get("number") == number), None)

    def kernel_path(self, number: int) -> Path | None:
        """The kernel an attempt judged, if it had one (an attempt still in flight may have one too)."""
        path = self.path / ATTEMPTS / f"{number:04d}" / "kernel.py"
        return path if path.is_file() else None


def read_run(path: Path) -> RunView:
    path = Path(path)
    view = RunView(path=path, record=_read_json(path / RECORD, {}))
    if not view.record:
        view.problems.append("run.json is missing or unreadable: the run died before writing it")
    if not (path / EVENTS).is_file():
        view.problems.append("events.jsonl is missing")
    view.events, bad = _read_jsonl(path / EVENTS)
    if bad:
        view.problems.append(f"events.jsonl has {bad} unreadable line(s) (cut off by a crash?)")
    if not (path / ATTEMPTS).is_dir():
        view.problems.append("the attempts folder is missing")
    for folder in sorted((path / ATTEMPTS).glob("[0-9]*")):
        meta = _read_json(folder / "attempt.json", None)
        if meta is None:
            view.problems.append(f"attempt {folder.name} has no attempt.json: it was in flight when the run ended")
            continue
        verdict_path = folder / "verdict.json"
        meta["verdict"] = _read_json(verdict_path, None) if verdict_path.exists() else None
        meta["dir"] = str(folder)
        if meta.get("status") in ("accepted", "rejected") and meta["verdict"] is None:
            view.problems.append(f"attempt {folder.name} was {meta['status']} but its verdict.json is missing")
        view.attempts.append(meta)
    _check_counts(view)
    if view.record.get("status") == "running" and view.status == "crashed":
        pid = view.record.get("environment", {}).get("pid")
        view.problems.append(f"run.json says running but its process (pid {pid}) is gone: it crashed or was killed")
    return view


def _check_counts(view: RunView) -> None:
    """What run.json promises against what is on disk."""
    recorded = view.record.get("attempts") or 0
    if recorded > len(view.attempts):
        view.problems.append(f"run.json counts {recorded} attempts but {len(view.attempts)} are readable on disk")
    if view.record.get("best") and view.best_kernel is None:
        view.problems.append(f"run.json names attempt {view.record['best'].get('attempt')} as the best, "
                             f"but best/kernel.py is missing")


def kernel_in_run(kernel: Path) -> tuple[Path, int | None] | None:
    """The run directory a kernel file belongs to and its attempt (None for best/kernel.py); None if loose."""
    kernel = Path(kernel).resolve()
    folder = kernel.parent
    if kernel.name != "kernel.py":
        return None
    if folder.name == BEST and (folder.parent / RECORD).is_file():
        return folder.parent, None
    if folder.parent.name == ATTEMPTS and folder.name.isdigit() and (folder.parent.parent / RECORD).is_file():
        return folder.parent.parent, int(folder.name)
    return None


def find_run(runs_dir: Path, ref: str) -> Path:
    """A run by path, or by a unique prefix of its name in runs_dir. Raises LookupError."""
    if Path(ref).is_dir():
        if not _looks_like_run(Path(ref)):
            raise LookupError(f"{ref} is not a run directory (no run.json, events.jsonl or attempts/ in it)")
        return Path(ref)
    if _looks_like_run(Path(runs_dir) / ref):
        return Path(runs_dir) / ref  # a whole name, even when it is also the prefix of a later "-2" run
    matches = sorted(p for p in Path(runs_dir).glob(f"{ref}*") if _looks_like_run(p))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupError(f"no run named {ref!r} in {runs_dir}")
    raise LookupError(f"{ref!r} matches {len(matches)} runs: " + ", ".join(p.name for p in matches[:5]))


def list_runs(runs_dir: Path) -> list[Path]:
    return sorted((p for p in Path(runs_dir).glob("*") if not p.name.startswith(".") and _looks_like_run(p)),
                  key=lambda p: p.name)


def _looks_like_run(path: Path) -> bool:
    """Even a run that died at once has its attempts folder (RunDir.create makes it)."""
    return path.is_dir() and any((path / name).exists() for name in (RECORD, EVENTS, ATTEMPTS))


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _read_jsonl(path: Path) -> tuple[list[dict], int]:
    rows, bad = [], 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows, 0
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            bad += 1
    return rows, bad


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
