"""kgen's command line: flags become objects, one function is called, the result is printed.

Exit codes: 0 success, 1 the answer is "no" (rejected / nothing verified), 2 usage, spec or config error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Write fast, verified Triton attention kernels from a FlexAttention spec.")
runs_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect run directories.")
app.add_typer(runs_app, name="runs")
err = Console(stderr=True)
out = Console()

# ---------------------------------------------------------------------- flags shared by attention and verify
ScoreMod = Annotated[Optional[Path], typer.Option("--score-mod", help="Spec file defining score_mod (and maybe "
                                                  "mask_mod).", show_default=False)]
MaskMod = Annotated[Optional[Path], typer.Option("--mask-mod", help="Spec file defining mask_mod.",
                                                 show_default=False)]
Batch = Annotated[int, typer.Option("--batch", help="Batch size B.")]
Heads = Annotated[int, typer.Option("--heads", help="Query heads H.")]
KvHeads = Annotated[Optional[int], typer.Option("--kv-heads", help="Key/value heads (GQA when fewer than "
                                                "--heads). Default: --heads.", show_default=False)]
SeqLen = Annotated[int, typer.Option("--seq-len", help="Query length Sq.")]
KvSeqLen = Annotated[Optional[int], typer.Option("--kv-seq-len", help="Key/value length Skv. Default: --seq-len.",
                                                 show_default=False)]
HeadDim = Annotated[int, typer.Option("--head-dim", help="Head dimension D.")]
Dtype = Annotated[str, typer.Option("--dtype", help="bf16 or fp16.")]
Device = Annotated[Optional[str], typer.Option("--device", help="cuda or cpu (Triton's interpreter, no timing). "
                                               "Default: cuda if available, else cpu.", show_default=False)]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds a single call may run before it counts as a "
                                        "hang.")]
CompileTimeout = Annotated[float, typer.Option("--compile-timeout", help="Seconds for importing the kernel and its "
                                               "first call (where Triton compiles).")]
Seed = Annotated[Optional[int], typer.Option("--seed", min=0, help="Seed of the verifier's inputs, to repeat a "
                                           "verification. Default: a fresh one each time, named in the report.",
                                           show_default=False)]

DEFAULTS = dict(batch=4, heads=16, seq_len=4096, head_dim=64, dtype="bf16", timeout=60.0, compile_timeout=300.0)


class UsageProblem(Exception):
    """Bad input from the user: printed as one paragraph, exit code 2."""


def build_problem(score_mod, mask_mod, batch, heads, kv_heads, seq_len, kv_seq_len, head_dim, dtype, device):
    from verifier.problem import Problem, ProblemError, Shape, default_device
    from verifier.spec import SpecError, SpecFiles, load_spec, validate_on_shape

    shape = Shape(batch, heads, kv_heads or heads, seq_len, kv_seq_len or seq_len, head_dim)
    files = SpecFiles(str(score_mod.resolve()) if score_mod else None, str(mask_mod.resolve()) if mask_mod else None)
    try:
        problem = Problem(files, shape, dtype, device or default_device()).validate()
        spec = load_spec(files)
        validate_on_shape(spec, shape)
    except (SpecError, ProblemError) as e:
        raise UsageProblem(str(e)) from None
    return problem, spec


def fail_usage(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


# ------------------------------------------------------------------------------------------------- verify
@app.command()
def verify(
    kernel: Annotated[Path, typer.Argument(help="Kernel file defining attention(q, k, v, *, scale=None, **buffers).",
                                           show_default=False)],
    score_mod: ScoreMod = None, mask_mod: MaskMod = None,
    batch: Batch = DEFAULTS["batch"], heads: Heads = DEFAULTS["heads"], kv_heads: KvHeads = None,
    seq_len: SeqLen = DEFAULTS["seq_len"], kv_seq_len: KvSeqLen = None, head_dim: HeadDim = DEFAULTS["head_dim"],
    dtype: Dtype = DEFAULTS["dtype"], device: Device = None,
    timeout: Timeout = DEFAULTS["timeout"], compile_timeout: CompileTimeout = DEFAULTS["compile_timeout"],
    seed: Seed = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON on stdout.")] = False,
    require_single_kernel: Annotated[bool, typer.Option("--require-single-kernel",
                                                        help="Reject kernels that launch more than once per call.")] = False,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Time FlexAttention for the ratio "
                                           "(GPU; compiled once and cached).")] = True,
):
    """Judge a kernel file: correctness on a suite of shapes, anti-cheat checks, and (GPU) speed."""
    from verifier.sandbox import Limits
    from verifier.verify import Verifier, VerifyOptions

    try:
        problem, spec = build_problem(score_mod, mask_mod, batch, heads, kv_heads, seq_len, kv_seq_len, head_dim,
                                      dtype, device)
    except UsageProblem as e:
        fail_usage(str(e))
    if not kernel.is_file():
        fail_usage(f"kernel file {kernel} does not exist.")
    options = VerifyOptions(limits=Limits(compile_s=compile_timeout, call_s=timeout), baseline=baseline,
                            require_single_kernel=require_single_kernel, seed=seed)
    verifier = Verifier(problem, options, spec=spec)
    label = f"verifying {kernel} on {problem.shape.label()} {problem.dtype} ({problem.device})"
    with err.status(label) as status:
        ticker = _Ticker(lambda: status.update(label + turn_wait_text(verifier)))
        try:
            verdict = verifier.verify(kernel.read_text())
        finally:
            ticker.stop()
    if as_json:
        print(json.dumps({"kernel": str(kernel), "problem": problem.to_dict(), "spec": spec.describe(),
                          "verdict": verdict.to_dict()}, indent=2, default=str))
    else:
        print_verdict(verdict, problem)
    raise typer.Exit(0 if verdict.accepted else 1)


# ---------------------------------------------------------------------------------------------- attention
@app.command()
def attention(
    score_mod: ScoreMod = None, mask_mod: MaskMod = None,
    batch: Batch = DEFAULTS["batch"], heads: Heads = DEFAULTS["heads"], kv_heads: KvHeads = None,
    seq_len: SeqLen = DEFAULTS["seq_len"], kv_seq_len: KvSeqLen = None, head_dim: HeadDim = DEFAULTS["head_dim"],
    dtype: Dtype = DEFAULTS["dtype"], device: Device = None,
    timeout: Timeout = DEFAULTS["timeout"], compile_timeout: CompileTimeout = DEFAULTS["compile_timeout"],
    seed: Seed = None,
    model: Annotated[Optional[str], typer.Option("--model", envvar="KGEN_MODEL", help="Model id at an OpenAI-"
                     "compatible endpoint. Without one, only the built-in proposer runs (offline).",
                     show_default=False)] = None,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="Endpoint root, e.g. http://localhost:8000/v1"
                        " for vLLM. Default: $OPENAI_BASE_URL, else OpenAI.", show_default=False)] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the API key.")]
    = "OPENAI_API_KEY",
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Seconds to wait for one model answer "
                               "(reasoning models think for minutes).")] = 900.0,
    request_attempts: Annotated[int, typer.Option("--request-attempts", min=1, help="Tries per model request "
                                "(429, 5xx, timeouts and dropped connections are retried with backoff).")] = 6,
    budget: Annotated[str, typer.Option("--budget", help="Time budget: 90s, 15m, 1h.")] = "10m",
    samples: Annotated[int, typer.Option("--samples", min=1, help="Model lineages in flight at once.")] = 2,
    stall_after: Annotated[int, typer.Option("--stall-after", min=1, help="Attempts without improvement before a "
                           "lineage restarts from the best kernel so far.")] = 4,
    max_attempts: Annotated[Optional[int], typer.Option("--max-attempts", help="Stop after this many attempts.",
                            show_default=False)] = None,
    builtin: Annotated[bool, typer.Option("--builtin/--no-builtin", help="Run the built-in proposer (lowered spec + "
                       "FlashAttention template) as a lineage and as the seed for the model.")] = True,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run directories are written.")] = Path("runs"),
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Time FlexAttention for the ratio "
                        "(GPU; compiled once and cached).")] = True,
):
    """Search for the fastest verified Triton kernel for a spec, within a time budget."""
    from agent.session import SessionError, start_session

    try:
        problem, spec = build_problem(score_mod, mask_mod, batch, heads, kv_heads, seq_len, kv_seq_len, head_dim,
                                      dtype, device)
        budget_s = parse_duration(budget)
    except UsageProblem as e:
        fail_usage(str(e))
    from agent.llm import ModelConfig
    from agent.loop import SearchConfig
    from verifier.sandbox import Limits

    model_config = ModelConfig(model=model, base_url=base_url, api_key_env=api_key_env,
                               request_timeout_s=request_timeout, max_attempts=request_attempts) if model else None
    try:
        session = start_session(problem, spec, model_config, SearchConfig(budget_s=budget_s, max_attempts=max_attempts),
                                runs_dir=runs_dir, samples=samples, stall_after=stall_after, builtin=builtin,
                                limits=Limits(compile_s=compile_timeout, call_s=timeout), baseline=baseline,
                                seed=seed, command=sys.argv)
    except SessionError as e:
        fail_usage(str(e))
    for note in session.notes:
        err.print(f"[dim]note: {note}[/]", highlight=False)
    record = run_with_progress(session)
    print_run_summary(session, record)
    if record.status == "failed":
        from agent.llm import ConfigError

        raise typer.Exit(2 if isinstance(session.search.fatal, ConfigError) else 1)
    raise typer.Exit(0 if record.best else 1)


def parse_duration(text: str) -> float:
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|)\s*", text)
    if not match:
        raise UsageProblem(f"--budget {text!r} is not a duration: write 90s, 15m or 1h.")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def run_with_progress(session):
    """Run the search with a live status line; every finished attempt gets a line of its own."""
    import signal

    from rich.live import Live

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    with Live(console=err, refresh_per_second=4, transient=True) as live:
        def on_event(kind, data):
            if kind == "attempt":
                err.print(attempt_line(data["attempt"], data["best"]), highlight=False)
            live.update(status_line(session))

        session.search.on_event = on_event
        ticker = _Ticker(lambda: live.update(status_line(session)))
        try:
            record = session.search.run()
        finally:
            ticker.stop()
            signal.signal(signal.SIGTERM, previous)
    return record


class _Ticker:
    """Refresh the status line every half second while the search runs."""

    def __init__(self, refresh):
        import threading

        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(refresh,), daemon=True)
        self.thread.start()

    def _run(self, refresh):
        while not self.done.wait(0.5):
            refresh()

    def stop(self):
        self.done.set()
        self.thread.join(1.0)  # no thread of ours may be mid-call at interpreter exit


def status_line(session) -> str:
    search, record = session.search, session.record
    best = record.best
    best_text = "none yet"
    if best:
        best_text = f"#{best['attempt']}" + (f" {best['tflops']:.1f} TFLOP/s" if best.get("tflops") else " (untimed)")
        if best.get("ratio_to_flex"):
            best_text += f", {best['ratio_to_flex']:.2f}x flex"
    return (f"[bold]{search.elapsed():5.0f}s[/] / {search.config.budget_s:.0f}s  attempts {record.attempts}  "
            f"verified {record.verified}  best {best_text}" + turn_wait_text(session.verifier))


def turn_wait_text(verifier) -> str:
    """What a status line adds while the verification waits for the GPU's turn: other kgen processes verifying on
    the same GPU can hold it for a while."""
    waiting = verifier.waiting_for_turn()
    return f"  [yellow]waiting for the GPU's turn: {waiting}[/]" if waiting else ""


def attempt_line(attempt, best: bool) -> str:
    from agent.records import ACCEPTED

    colour = "green" if attempt.status == ACCEPTED else "red" if attempt.status == "rejected" else "yellow"
    star = "  [bold yellow]new best[/]" if best else ""
    return (f"[dim]{attempt.finished_s:6.1f}s[/] #{attempt.number:<3} {attempt.candidate.origin:<7} "
            f"{attempt.candidate.label:<22} [{colour}]{attempt.summary()}[/]{star}")


def print_run_summary(session, record) -> None:
    out.print(f"\nrun {record.id}: {record.status} ({record.stop_reason}); {record.attempts} attempt(s), "
              f"{record.verified} verified", highlight=False)
    out.print(f"run directory: {session.rundir.path}", highlight=False)
    if record.status == "failed":
        err.print(f"[bold red]error:[/] {record.stop_reason}", highlight=False)
    if record.best:
        b = record.best
        speed = f"{b['ms']:.3f} ms, {b['tflops']:.1f} TFLOP/s" if b.get("ms") else "correct (not timed: no GPU)"
        flex = f", {b['ratio_to_flex']:.2f}x flex" if b.get("ratio_to_flex") else ""
        out.print(f"[bold green]best kernel[/]: {b['path']}  ({speed}{flex}; {b['origin']} {b['label']})",
                  highlight=False)
    else:
        out.print("[bold red]no verified kernel[/] within the budget; see the attempts' verdicts in the run "
                  "directory.", highlight=False)
    if session.model_config is None:
        out.print("[dim]Only the built-in proposer ran. To search with a model too: --model MODEL "
                  "[--base-url URL] with its key in $OPENAI_API_KEY (or --api-key-env NAME).[/]", highlight=False)


def print_verdict(verdict, problem) -> None:
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    table.add_column("stage")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for stage in verdict.stages:
        mark = "[green]ok[/]" if stage.ok else f"[red]{stage.reason}[/]"
        table.add_row(stage.stage, mark, stage.message.splitlines()[0][:160] if stage.message else "")
    out.print(table)
    if not verdict.accepted:
        out.print(f"\n[bold red]REJECTED[/] [red]{verdict.reason}[/]\n{verdict.message}", highlight=False)
    else:
        out.print(f"\n[bold green]ACCEPTED[/] {problem.shape.label()} {problem.dtype} on {problem.device}")
        for line in metric_lines(verdict.metrics):
            out.print("  " + line, highlight=False)
    for note in verdict.notes:
        out.print(f"[dim]note: {note}[/]", highlight=False)


def metric_lines(m) -> list[str]:
    from verifier.compiled import describe as describe_compiled

    lines = []
    if m.max_error is not None:
        lines.append(f"max error {m.max_error:.3g} ({m.error_budget_used:.0%} of tolerance)")
    if m.ms is not None:
        flex = f", {m.ratio_to_flex:.2f}x flex ({m.flex_tflops:.1f} TFLOP/s)" if m.ratio_to_flex else ""
        lines.append(f"{m.ms:.3f} ms median (min {m.ms_min:.3f}, spread {m.ms_spread:.1%}), "
                     f"{m.tflops:.1f} TFLOP/s over unmasked work{flex}")
        if m.fraction_of_peak:
            lines.append(f"{m.fraction_of_peak:.0%} of this GPU's measured matmul peak ({m.peak_tflops:.0f} TFLOP/s)")
        lines.append(f"{m.launches_per_call} kernel launch(es) per call ({', '.join(m.launch_names)})"
                     + (f", {m.one_time_launches} more on the first call" if m.one_time_launches else ""))
        lines.append(f"{(m.extra_memory_bytes or 0) / 2**20:.2f} MiB allocated during a call beyond the output")
        lines += [f"compiled {describe_compiled(k)}" for k in m.compiled]
    if m.mask_density is not None and m.mask_density < 1:
        lines.append(f"mask keeps {m.mask_density:.1%} of the scores")
    return lines


# ---- runs and export (issue 7)
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Where run directories are.")]
RunRef = Annotated[str, typer.Argument(help="A run directory, or a unique prefix of a run's name in --runs-dir.",
                                       show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]


def open_run(ref: str, runs_dir: Path):
    """The run a user named, read (even half-written); an unknown or ambiguous name is a usage error."""
    from agent.rundir import find_run, read_run

    try:
        return read_run(find_run(runs_dir, ref))
    except LookupError as e:
        fail_usage(str(e))


def print_table(table) -> None:
    """Folded to the terminal's width; whole lines when piped (scripts, less, tests)."""
    (out if out.is_terminal else Console(width=240)).print(table)


def print_problems(name: str, problems: list[str], console=err) -> None:
    """What a crash left missing or unreadable: part of the report for list and show, a warning elsewhere."""
    for problem in problems:
        console.print(f"[yellow]{name}: {problem}[/]", highlight=False, soft_wrap=True)


@runs_app.command("list")
def runs_list(runs_dir: RunsDir = Path("runs"), as_json: AsJson = False):
    """One line per run: when, spec, model, budget, attempts, verified, best TFLOP/s, ratio to flex, status."""
    from dataclasses import asdict

    from agent.runs import runs_table, summarize_all

    if not runs_dir.is_dir():
        fail_usage(f"no runs directory at {runs_dir}: pass --runs-dir DIR")
    runs = summarize_all(runs_dir)
    if as_json:
        print(json.dumps([asdict(r) for r in runs], indent=2))
        raise typer.Exit(0)
    if not runs:
        out.print(f"no runs in {runs_dir}", highlight=False, soft_wrap=True)
    else:
        print_table(runs_table(runs))
    for r in runs:
        print_problems(r.name, r.problems, out)


@runs_app.command("show")
def runs_show(run: RunRef, runs_dir: RunsDir = Path("runs"), as_json: AsJson = False):
    """A run's config and its attempts: lineage, proposer, verdict, reason, TFLOP/s, time; and the best kernel."""
    from dataclasses import asdict

    from agent.runs import attempts_table, best_line, detail, header_lines

    view = open_run(run, runs_dir)
    d = detail(view)
    if as_json:
        print(json.dumps(asdict(d), indent=2, default=str))
        raise typer.Exit(0)
    for line in header_lines(d):
        out.print(line, highlight=False, soft_wrap=True)
    print_table(attempts_table(d))
    out.print(best_line(d), highlight=False, soft_wrap=True)
    print_problems(view.name, view.problems, out)


@runs_app.command("plot")
def runs_plot(run: RunRef, runs_dir: RunsDir = Path("runs"),
              output: Annotated[Optional[Path], typer.Option("-o", "--output", help="PNG to write. Default: "
                                "<run name>.png here.", show_default=False)] = None):
    """A PNG of the search: attempts over time by verdict, the best so far, flex and SDPA for reference."""
    from agent.plot import plot_run
    from agent.runs import detail

    view = open_run(run, runs_dir)
    path = plot_run(detail(view), output or Path(f"{view.name}.png"))
    out.print(f"wrote {path}", highlight=False, soft_wrap=True)
    print_problems(view.name, view.problems)


@runs_app.command("diff")
def runs_diff(run: RunRef,
              a: Annotated[str, typer.Argument(help="An attempt number, or 'best'.", show_default=False)],
              b: Annotated[str, typer.Argument(help="An attempt number, or 'best'.", show_default=False)],
              runs_dir: RunsDir = Path("runs")):
    """The unified diff between two attempts' kernels."""
    from agent.runs import kernel_diff

    view = open_run(run, runs_dir)
    try:
        diff = kernel_diff(view, a, b)
    except LookupError as e:
        fail_usage(str(e))
    colours = {"+": "green", "-": "red", "@": "cyan"}
    for line in diff.splitlines():
        out.print(line, style=colours.get(line[:1]), markup=False, highlight=False, soft_wrap=True)
    if not diff:
        err.print(f"attempts {a} and {b} have the same kernel", highlight=False, soft_wrap=True)


@app.command("export")
def export_kernel(
    run: Annotated[str, typer.Argument(help="A run directory or a unique prefix of a run's name (its best kernel), "
                                       "or a kernel file.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The module to write, e.g. my_attention.py.",
                                         show_default=False)],
    runs_dir: RunsDir = Path("runs"), score_mod: ScoreMod = None, mask_mod: MaskMod = None,
):
    """Write a standalone module (torch and triton only) with the kernel as a torch custom op: attention(q, k, v)."""
    from agent.export import ExportError, NothingVerified, from_kernel_file, from_run, write_module
    from verifier.spec import SpecFiles

    if output.suffix != ".py":
        fail_usage(f"-o {output}: the module must be a .py file")
    spec_files = None
    if score_mod or mask_mod:
        spec_files = SpecFiles(str(score_mod.resolve()) if score_mod else None,
                               str(mask_mod.resolve()) if mask_mod else None)
    try:
        item = from_kernel_file(Path(run), spec_files) if Path(run).is_file() else from_run(open_run(run, runs_dir))
        exported = write_module(item, output)
    except NothingVerified as e:
        err.print(f"[bold red]no:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except ExportError as e:
        fail_usage(str(e))
    out.print(f"wrote {exported.path}: attention for spec `{exported.spec_name}` as {exported.op}",
              highlight=False, soft_wrap=True)
    for line in exported.provenance:
        out.print(f"  {line}", highlight=False, soft_wrap=True)
    out.print(f"use it: from {exported.path.stem} import attention; o = attention(q, k, v)",
              highlight=False, soft_wrap=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
