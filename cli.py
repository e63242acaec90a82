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
                            require_single_kernel=require_single_kernel)
    verifier = Verifier(problem, options, spec=spec)
    with err.status(f"verifying {kernel} on {problem.shape.label()} {problem.dtype} ({problem.device})"):
        verdict = verifier.verify(kernel.read_text())
    if as_json:
        print(json.dumps({"kernel": str(kernel), "problem": problem.to_dict(), "spec": spec.describe(),
                          "verdict": verdict.to_dict()}, indent=2, default=str))
    else:
        print_verdict(verdict, problem)
    raise typer.Exit(0 if verdict.accepted else 1)


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
    if m.mask_density is not None and m.mask_density < 1:
        lines.append(f"mask keeps {m.mask_density:.1%} of the scores")
    return lines


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
