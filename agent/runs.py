"""Runs as a person inspects them: one summary per run, a table of attempts, the diff of two kernels.

Plain data first (what `--json` prints), rich tables second (what a terminal shows). Everything is read
through agent/rundir.py, so half-written runs come with the list of what is missing.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rich.table import Table

from agent.rundir import RunView, list_runs, read_run

NUMERIC = ("#", "budget", "attempts", "verified", "best TFLOP/s", "TFLOP/s", "x flex", "time", "seed")
COLOURS = {"accepted": "green", "rejected": "red", "no_kernel": "yellow", "failed": "magenta", "cancelled": "dim"}


@dataclass
class RunSummary:
    """One line of `kgen runs list`."""

    name: str
    path: str
    started_at: str
    spec: str
    model: str  # the model id, or "built-in" for an offline run
    budget_s: float | None
    attempts: int
    verified: int
    best_attempt: int | None
    best_tflops: float | None
    ratio_to_flex: float | None
    status: str  # finished | interrupted | failed | running | crashed
    problems: list[str] = field(default_factory=list)


@dataclass
class AttemptRow:
    """One attempt as `kgen runs show` lists it."""

    number: int
    lineage: int | None
    parent: int | None  # the attempt this one refines
    proposer: str  # "built-in" or the model id
    label: str
    status: str  # accepted | rejected | no_kernel | failed | cancelled
    reason: str | None  # the verifier's reason code
    message: str  # one line: why, or how fast
    ms: float | None
    tflops: float | None
    ratio_to_flex: float | None
    elapsed_s: float | None  # when it finished, in seconds since the run started
    kernel: str | None
    seed: int | None = None  # of the verification's inputs: `kgen verify --seed` repeats it


@dataclass
class RunDetail:
    """Everything `kgen runs show` and `kgen runs plot` need."""

    summary: RunSummary
    problem: dict
    config: dict
    environment: dict
    spec_source: str
    stop_reason: str
    best_kernel: str | None
    flex_tflops: float | None  # reference lines (GPU runs only)
    sdpa_tflops: float | None
    attempts: list[AttemptRow]


# ------------------------------------------------------------------------------------------------ reading
def summarize_all(runs_dir: Path) -> list[RunSummary]:
    return [summarize(read_run(path)) for path in list_runs(runs_dir)]


def summarize(view: RunView) -> RunSummary:
    return _summary(view, attempt_rows(view))


def detail(view: RunView) -> RunDetail:
    rows = attempt_rows(view)
    metrics = [a["verdict"]["metrics"] for a in view.attempts if (a.get("verdict") or {}).get("metrics")]
    flex = next((m["flex_tflops"] for m in metrics if m.get("flex_tflops")), None)
    sdpa = next((m["flops"] / (m["sdpa_ms"] * 1e9) for m in metrics if m.get("sdpa_ms") and m.get("flops")), None)
    record = view.record
    return RunDetail(summary=_summary(view, rows), problem=record.get("problem", {}),
                     config=record.get("config", {}), environment=record.get("environment", {}),
                     spec_source=record.get("spec", {}).get("source", ""), stop_reason=record.get("stop_reason", ""),
                     best_kernel=str(view.best_kernel) if view.best_kernel else None,
                     flex_tflops=flex, sdpa_tflops=sdpa, attempts=rows)


def attempt_rows(view: RunView) -> list[AttemptRow]:
    model = _model(view)
    model = "model" if model == "unknown" else model
    rows = []
    for a in view.attempts:
        c, verdict = a.get("candidate", {}), a.get("verdict") or {}
        m = verdict.get("metrics", {})
        kernel = view.kernel_path(a["number"])
        rows.append(AttemptRow(number=a["number"], lineage=c.get("lineage"), parent=c.get("parent"),
                               proposer="built-in" if c.get("origin") == "builtin" else model,
                               label=c.get("label", ""), status=a.get("status", "?"), reason=verdict.get("reason"),
                               message=_one_line(a, verdict), ms=m.get("ms"), tflops=m.get("tflops"),
                               ratio_to_flex=m.get("ratio_to_flex"), elapsed_s=a.get("finished_s"),
                               kernel=str(kernel) if kernel else None, seed=verdict.get("seed")))
    return rows


def _summary(view: RunView, rows: list[AttemptRow]) -> RunSummary:
    """Counted from the attempts on disk, so a run that lost run.json still adds up."""
    best = _best(view, rows)
    return RunSummary(name=view.name, path=str(view.path), started_at=view.started_at, spec=view.spec_name,
                      model=_model(view), budget_s=view.record.get("config", {}).get("search", {}).get("budget_s"),
                      attempts=len(rows), verified=sum(r.status == "accepted" for r in rows),
                      best_attempt=best.get("attempt"), best_tflops=best.get("tflops"),
                      ratio_to_flex=best.get("ratio_to_flex"), status=view.status, problems=list(view.problems))


def kernel_diff(view: RunView, a: str, b: str) -> str:
    """Unified diff of two attempts' kernels; `a` and `b` are attempt numbers or "best". Raises LookupError."""
    (name_a, text_a), (name_b, text_b) = _kernel(view, a), _kernel(view, b)
    return "".join(difflib.unified_diff(text_a.splitlines(True), text_b.splitlines(True), name_a, name_b))


def _kernel(view: RunView, ref: str) -> tuple[str, str]:
    if ref == "best":
        number = (view.record.get("best") or view.best_report).get("attempt")
        if number is not None and view.kernel_path(number):  # without best/kernel.py's header comment
            return f"best (attempt {number})", view.kernel_path(number).read_text()
        if view.best_kernel is None:
            raise LookupError(f"run {view.name} has no best kernel")
        return "best/kernel.py", view.best_kernel.read_text()
    if not ref.isdigit():
        raise LookupError(f"{ref!r} is not an attempt: give its number (1, 2, ...) or 'best'")
    path = view.kernel_path(int(ref))
    if path is None:
        known = ", ".join(str(a["number"]) for a in view.attempts) or "none"
        why = "it has no kernel (the answer held none)" if view.attempt(int(ref)) else f"attempts on disk: {known}"
        raise LookupError(f"run {view.name} has no kernel for attempt {ref}: {why}")
    return f"attempt {int(ref)}", path.read_text()


def _model(view: RunView) -> str:
    if not view.record:
        return "unknown"  # run.json is gone, and the model's name with it
    model = view.record.get("config", {}).get("model")
    return model.get("model", "model") if model else "built-in"


def _best(view: RunView, rows: list[AttemptRow]) -> dict:
    """run.json's best; for a run that lost it, the fastest accepted attempt on disk (or the first, untimed)."""
    if view.record.get("best"):
        return view.record["best"]
    accepted = [r for r in rows if r.status == "accepted"]
    if not accepted:
        return {}
    timed = [r for r in accepted if r.tflops]
    row = max(timed, key=lambda r: r.tflops) if timed else accepted[0]
    return {"attempt": row.number, "tflops": row.tflops, "ratio_to_flex": row.ratio_to_flex}


def _one_line(attempt: dict, verdict: dict) -> str:
    status = attempt.get("status")
    if status == "accepted":
        return "correct" + ("" if verdict.get("metrics", {}).get("ms") else " (not timed: no GPU)")
    text = verdict.get("message") if verdict else None
    text = text or attempt.get("candidate", {}).get("format_error") or attempt.get("error") or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    if lines[0].endswith(":"):  # "during <trial>:" then a traceback: its last line names the error
        return f"{lines[0]} {lines[-1]}"[:160]
    return lines[0][:160]


# ---------------------------------------------------------------------------------------------- rendering
def runs_table(runs: list[RunSummary]) -> Table:
    table = _table("run", "when", "spec", "model", "budget", "attempts", "verified", "best TFLOP/s", "x flex",
                   "status")
    for r in runs:
        status = r.status + (" [yellow](!)[/]" if r.problems else "")
        table.add_row(r.name, when(r.started_at), r.spec, r.model, duration(r.budget_s), str(r.attempts),
                      str(r.verified), _best_text(r), number(r.ratio_to_flex, "{:.2f}x"), status)
    return table


def attempts_table(d: RunDetail) -> Table:
    table = _table("#", "lineage", "proposer", "label", "verdict", "reason", "detail", "TFLOP/s", "x flex",
                   "time", "seed")
    for r in d.attempts:
        lineage = "-" if r.lineage is None else str(r.lineage) + (f" <#{r.parent}" if r.parent else "")
        star = " [bold yellow]*[/]" if r.number == d.summary.best_attempt else ""
        table.add_row(f"{r.number}{star}", lineage, r.proposer, r.label,
                      f"[{COLOURS.get(r.status, 'white')}]{r.status}[/]", r.reason or "", r.message,
                      number(r.tflops, "{:.1f}"), number(r.ratio_to_flex, "{:.2f}x"), number(r.elapsed_s, "{:.0f}s"),
                      number(r.seed, "{}"))
    return table


def header_lines(d: RunDetail) -> list[str]:
    """The run's config in a few lines, above the attempts table."""
    s, problem, search, env = d.summary, d.problem, d.config.get("search", {}), d.environment
    lines = [f"run {s.name}: {s.status}" + (f" ({d.stop_reason})" if d.stop_reason else ""),
             f"started {when(s.started_at)}; spec {s.spec}; proposers: {_proposers(d)}",
             f"problem: {_problem_text(problem, env)}",
             f"budget {duration(search.get('budget_s'))}"
             + (f", at most {search['max_attempts']} attempts" if search.get("max_attempts") else "")
             + f"; {s.attempts} attempt(s), {s.verified} verified"]
    if d.flex_tflops:
        lines.append(f"flex: {d.flex_tflops:.1f} TFLOP/s" + (f"; SDPA: {d.sdpa_tflops:.1f} TFLOP/s"
                                                            if d.sdpa_tflops else ""))
    return lines


def best_line(d: RunDetail) -> str:
    s = d.summary
    if d.best_kernel is None:
        return "no verified kernel" + (f" (run.json names attempt {s.best_attempt}, but best/kernel.py is missing)"
                                       if s.best_attempt else "")
    speed = f"{s.best_tflops:.1f} TFLOP/s, {number(s.ratio_to_flex, '{:.2f}x')} flex" if s.best_tflops else "untimed"
    return f"best kernel: {d.best_kernel}  (attempt {s.best_attempt}, {speed})"


def _problem_text(problem: dict, env: dict) -> str:
    if not problem.get("shape"):
        return "unknown (run.json is missing)"
    sh = problem["shape"]
    return (f"B{sh['batch']} H{sh['heads']}/{sh['kv_heads']} Sq{sh['seq_len']} Skv{sh['kv_seq_len']} "
            f"D{sh['head_dim']} {problem.get('dtype')} on {problem.get('device')}"
            + (f" ({env['gpu']})" if env.get("gpu") else ""))


def _proposers(d: RunDetail) -> str:
    if not d.config:
        return "unknown (run.json is missing)"
    model = d.config.get("model")
    names = (["built-in"] if d.config.get("builtin", True) else []) + ([model.get("model", "?")] if model else [])
    return " + ".join(names) or "?"


def _best_text(r: RunSummary) -> str:
    if r.best_attempt is None:
        return "-"
    return f"{r.best_tflops:.1f}" if r.best_tflops else "untimed"


def _table(*columns: str) -> Table:
    """Numbers never wrap; text folds when the terminal is narrow."""
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    for name in columns:
        table.add_column(name, overflow="fold", no_wrap=name in NUMERIC)
    return table


def when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso or "?"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def number(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
