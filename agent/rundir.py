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
    return "\n\n".join(f"## {m['role']}\n\n{m['content']}" for m in messages) + "\n"


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class RunView:
    """A run as read back from disk; `problems` lists what is missing or unreadable."""

    path: Path
    record: dict
    attempts: list[dict] = field(default_factory=list)  # attempt.json, with "verdict" added when present
    events: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        status = self.record.get("status", "unknown")
        if status == "running" and not _alive(self.record.get("environment", {}).get("pid")):
            return "crashed"  # nobody is writing it any more
        return status


def read_run(path: Path) -> RunView:
    path = Path(path)
    view = RunView(path=path, record=_read_json(path / RECORD, {}))
    if not view.record:
        view.problems.append("run.json is missing or unreadable: the run died before writing it")
    view.events, bad = _read_jsonl(path / EVENTS)
    if bad:
        view.problems.append(f"events.jsonl has {bad} unreadable line(s) (cut off by a crash?)")
    for folder in sorted((path / ATTEMPTS).glob("[0-9]*")):
        meta = _read_json(folder / "attempt.json", None)
        if meta is None:
            view.problems.append(f"attempt {folder.name} has no attempt.json: it was in flight when the run ended")
            continue
        verdict_path = folder / "verdict.json"
        meta["verdict"] = _read_json(verdict_path, None) if verdict_path.exists() else None
        meta["dir"] = str(folder)
        view.attempts.append(meta)
    return view


def find_run(runs_dir: Path, ref: str) -> Path:
    """A run by path, or by a unique prefix of its name in runs_dir. Raises LookupError."""
    if Path(ref).is_dir():
        return Path(ref)
    matches = sorted(p for p in Path(runs_dir).glob(f"{ref}*") if p.is_dir())
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupError(f"no run named {ref!r} in {runs_dir}")
    raise LookupError(f"{ref!r} matches {len(matches)} runs: " + ", ".join(p.name for p in matches[:5]))


def list_runs(runs_dir: Path) -> list[Path]:
    return sorted((p for p in Path(runs_dir).glob("*") if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


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
