"""Export a verified kernel as a standalone module: torch and triton only, the spec's tensors bound in, and
`attention(q, k, v, scale=None)` registered as a torch custom op (see export.py.j2 for what it holds).

The source of truth is the run directory: the kernel an attempt verified, and the spec text run.json
recorded (the spec file on disk may have changed since), executed again to recover its captured tensors.
"""
from __future__ import annotations

import ast
import base64
import hashlib
import io
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import torch

from agent.records import describe_speed
from agent.rundir import RunView, kernel_in_run, read_run
from verifier.problem import Shape
from verifier.spec import Spec, SpecError, SpecFiles, load_spec
from verifier.suite import interpreter_cap
from verifier.verdict import Verdict

_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
NO_SPEC = "# no spec file: plain softmax attention\n"  # Spec.source with no files


class ExportError(Exception):
    """The request cannot be met as asked (exit code 2)."""


class NothingVerified(ExportError):
    """There is no verified kernel to export (exit code 1)."""


@dataclass
class Exportable:
    """A kernel with what the exported module binds in and says about where it came from."""

    kernel: str  # the source exactly as verified
    spec_name: str
    spec_source: str
    buffers: dict[str, torch.Tensor]
    provenance: list[str] = field(default_factory=list)
    verified_on: Shape | None = None  # the run's target shape; None: a loose file kgen has not checked


@dataclass
class Exported:
    path: Path
    op: str  # torch.ops.<namespace>.attention
    spec_name: str
    provenance: list[str]


# ------------------------------------------------------------------------------------------------ sources
def from_run(view: RunView, attempt: int | None = None) -> Exportable:
    """The run's best kernel, or one accepted attempt's."""
    number = attempt if attempt is not None else (view.record.get("best") or view.best_report).get("attempt")
    if number is None:
        raise NothingVerified(f"run {view.name} has no verified kernel to export ({len(view.attempts)} attempt(s), "
                              f"none accepted)")
    meta = view.attempt(number) or {}
    if attempt is not None and meta.get("status") != "accepted":
        reason = (meta.get("verdict") or {}).get("reason")
        raise NothingVerified(f"attempt {number} of run {view.name} was not accepted ({meta.get('status', 'unknown')}"
                              f"{': ' + reason if reason else ''}): export the run's best kernel or an accepted one")
    path = view.kernel_path(number) or (view.best_kernel if attempt is None else None)
    if path is None:
        raise NothingVerified(f"run {view.name}: the kernel of attempt {number} is missing from the run directory")
    spec = _recorded_spec(view)
    verdict = Verdict.from_dict(meta["verdict"]) if meta.get("verdict") else None
    problem = view.record.get("problem") or view.best_report.get("problem", {})
    candidate = meta.get("candidate", {})
    lines = [f"run {view.name}, attempt {number} ({candidate.get('origin', '?')}: {candidate.get('label', '?')})",
             f"verified on {_problem_text(problem, view)}" + (f"; {describe_speed(verdict)}" if verdict else "")]
    shape = Shape(**problem["shape"]) if problem.get("shape") else None
    return Exportable(path.read_text(), spec.name, spec.source, spec.buffers, lines, shape)


def from_kernel_file(path: Path, spec_files: SpecFiles | None = None) -> Exportable:
    """A kernel file: one inside a run directory takes that run's spec and must be verified; a loose one
    takes the spec given (or none)."""
    path = Path(path)
    found = kernel_in_run(path)
    if found is not None and spec_files is None:
        run, attempt = found
        return from_run(read_run(run), attempt)
    spec = _load(spec_files or SpecFiles())
    lines = [f"from the file {path.resolve()}: not checked by kgen here; `kgen verify` judges it"]
    return Exportable(path.read_text(), spec.name, spec.source, spec.buffers, lines)


def _recorded_spec(view: RunView) -> Spec:
    """Load the spec text run.json recorded, written back out under the files' own names."""
    if not view.record:
        raise ExportError(f"run {view.name} has no readable run.json, so its spec is unknown: export its kernel "
                          f"file with --score-mod/--mask-mod instead")
    files = view.record.get("problem", {}).get("spec", {})
    originals = list(dict.fromkeys(p for p in (files.get("score_path"), files.get("mask_path")) if p))
    texts = _split_source(view.record.get("spec", {}).get("source", NO_SPEC), [Path(p).name for p in originals])
    with tempfile.TemporaryDirectory(prefix="kgen-export-") as tmp:
        copies = {}
        for i, original in enumerate(originals):  # a folder each: two files may share a name
            copies[original] = Path(tmp, str(i), Path(original).name)
            copies[original].parent.mkdir()
            copies[original].write_text(texts[Path(original).name])
        spec = _load(SpecFiles(*(str(copies[p]) if p else None for p in (files.get("score_path"),
                                                                          files.get("mask_path")))))
    spec.sources = {p: texts[Path(p).name] for p in originals}  # the recorded names, not the copies
    return spec


def _split_source(source: str, names: list[str]) -> dict[str, str]:
    """Spec.source is each file's text headed by `# ---- <file name>`: cut it back into files."""
    texts: dict[str, str] = {}
    current = None
    for line in source.splitlines(True):
        header = line.rstrip("\n").removeprefix("# ---- ")
        if line.startswith("# ---- ") and header in names and header not in texts:
            current = header
            texts[current] = ""
        elif current is not None:
            texts[current] += line
    missing = [n for n in names if n not in texts]
    if missing:
        raise ExportError(f"run.json's spec text has no part for {', '.join(missing)}: the record is damaged")
    return texts


def _load(files: SpecFiles) -> Spec:
    try:
        return load_spec(files)
    except SpecError as e:
        raise ExportError(str(e)) from None


def _problem_text(problem: dict, view: RunView) -> str:
    if not problem:
        return "an unknown problem (run.json is missing)"
    gpu = view.record.get("environment", {}).get("gpu")
    shape = Shape(**problem["shape"])
    # on a CPU the suite is capped to small shapes: say what was checked, not just what was asked for
    checked = ""
    if problem["device"] == "cpu":  # the verifier's own notes say the same
        checked = (f" (under Triton's interpreter, on shapes capped at {interpreter_cap(shape).label()}"
                   + ("; bf16 run as fp16)" if problem["dtype"] == "bf16" else ")"))
    return f"{shape.label()} {problem['dtype']} on {problem['device']}" + (f" ({gpu})" if gpu else "") + checked


# ------------------------------------------------------------------------------------------------ writing
def write_module(item: Exportable, out: Path) -> Exported:
    """Render the module to `out` and check that it parses."""
    out = Path(out)
    saved = _saved_buffers(item.buffers)
    # the head_dim and GQA group the module admits (None: any)
    head_dim, group = (item.verified_on.head_dim, item.verified_on.group) if item.verified_on else (None, None)
    namespace = "kgen_" + re.sub(r"\W+", "_", item.spec_name).strip("_") + "_" + \
        hashlib.sha256(item.kernel.encode() + saved + repr((head_dim, group)).encode()).hexdigest()[:8]  # all it holds
    encoded = base64.b64encode(saved).decode() if item.buffers else ""
    provenance = item.provenance + [f"exported {datetime.now(timezone.utc).isoformat(timespec='seconds')} "
                                    f"by `kgen export`"]
    text = _ENV.get_template("export.py.j2").render(
        spec_name=item.spec_name, module_name=out.stem, namespace=namespace, provenance=provenance,
        spec_lines=item.spec_source.rstrip("\n").splitlines(), kernel_literal=_literal(item.kernel),
        buffer_chunks=[encoded[i:i + 100] for i in range(0, len(encoded), 100)],
        buffer_notes=[_describe(n, t) for n, t in item.buffers.items()],
        head_dim=head_dim, group=group)
    compile(text, str(out), "exec")  # a template bug fails here, not in the user's import
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return Exported(out, f"torch.ops.{namespace}.attention", item.spec_name, provenance)


def _describe(name: str, t: torch.Tensor) -> str:
    text = f"{name}: {list(t.shape)} {str(t.dtype).removeprefix('torch.')}"
    return text + (f" = {t.tolist()}" if t.numel() <= 16 else "")  # small ones readable at a glance


def _saved_buffers(buffers: dict[str, torch.Tensor]) -> bytes:
    data = io.BytesIO()
    torch.save({n: t.detach().cpu().contiguous().clone() for n, t in buffers.items()}, data)
    return data.getvalue()


def _literal(source: str) -> str:
    """The kernel as a readable raw string when that round-trips exactly, else as repr()."""
    literal = "r'''\n" + source + "'''"
    try:
        if ast.literal_eval(literal)[1:] == source:
            return literal + "[1:]"  # [1:]: the newline after the quotes keeps the kernel's first line whole
    except (SyntaxError, ValueError):
        pass
    return repr(source)
