"""Load and validate a spec file: score_mod / mask_mod in FlexAttention's vocabulary.

A spec file is Python. `score_mod(score, b, h, q_idx, kv_idx)` and `mask_mod(b, h, q_idx, kv_idx)`
are both optional; module-level tensors they read are captured buffers. Every problem with a spec is
reported as a SpecError whose message is one paragraph saying what is wrong and what to do.
"""
from __future__ import annotations

import inspect
import itertools
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ARITY = {"score_mod": 5, "mask_mod": 4}
SIGNATURE = {
    "score_mod": "score_mod(score, b, h, q_idx, kv_idx)",
    "mask_mod": "mask_mod(b, h, q_idx, kv_idx)",
}
# Module-level values a spec function may read besides tensors: constants, modules and helpers.
PLAIN_CONSTANTS = (int, float, bool, str, type(None), complex, torch.dtype)


class SpecError(Exception):
    """A spec that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class SpecFiles:
    """Where a spec comes from: the --score-mod and --mask-mod files (either may be None)."""

    score_path: str | None = None
    mask_path: str | None = None

    @property
    def paths(self) -> list[str]:
        return list(dict.fromkeys(p for p in (self.score_path, self.mask_path) if p))

    @property
    def name(self) -> str:
        stems = [Path(p).stem for p in self.paths]
        return "+".join(stems) if stems else "noop"

    def resolved(self) -> "SpecFiles":
        """The same files by absolute path, for child processes that run in their own directories."""
        return SpecFiles(*(str(Path(p).resolve()) if p else None for p in (self.score_path, self.mask_path)))


@dataclass
class Spec:
    files: SpecFiles
    score_mod: Callable | None = field(default=None, repr=False)
    mask_mod: Callable | None = field(default=None, repr=False)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    sources: dict[str, str] = field(default_factory=dict, repr=False)  # path -> text
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def source(self) -> str:
        """All spec text, each file headed by its name (what a prompt or report shows)."""
        if not self.sources:
            return "# no spec file: plain softmax attention\n"
        return "\n".join(f"# ---- {Path(p).name}\n{text.rstrip()}\n" for p, text in self.sources.items())

    def describe(self) -> dict:
        return {
            "name": self.name,
            "files": self.files.paths,
            "score_mod": self.score_mod is not None,
            "mask_mod": self.mask_mod is not None,
            "buffers": {n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                        for n, t in self.buffers.items()},
            "notes": self.notes,
        }


def load_spec(files: SpecFiles) -> Spec:
    """Load the functions and captured buffers. Raises SpecError."""
    modules = {path: _exec_file(path) for path in files.paths}
    spec = Spec(files=files, sources={p: Path(p).read_text() for p in files.paths})
    if len(files.paths) == 2:  # each flag names its own file: each must define its function
        spec.score_mod = _find(modules[files.score_path], "score_mod", files.score_path, required=True)
        spec.mask_mod = _find(modules[files.mask_path], "mask_mod", files.mask_path, required=True)
    elif files.paths:  # one file: take whatever it defines
        path = files.paths[0]
        spec.score_mod = _find(modules[path], "score_mod", path, required=False)
        spec.mask_mod = _find(modules[path], "mask_mod", path, required=False)
        _check_named_functions(modules[path], path)
        flag, found = ("score_mod", spec.score_mod) if files.score_path else ("mask_mod", spec.mask_mod)
        if found is None and (spec.score_mod or spec.mask_mod):
            other = "mask_mod" if flag == "score_mod" else "score_mod"
            spec.notes.append(f"{Path(path).name} was passed as --{flag.replace('_', '-')} but defines only {other}, "
                              f"which is used as the {other}")
    for fn in (spec.score_mod, spec.mask_mod):
        if fn is not None:
            _collect_buffers(fn, spec.buffers)
    found = [r for r in ("score_mod", "mask_mod") if getattr(spec, r) is not None]
    spec.notes.insert(0, "found " + (" and ".join(found) if found else "no score_mod or mask_mod: plain attention"))
    return spec


_LOADS = itertools.count()


def _exec_file(path: str) -> types.ModuleType:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"Spec file {path} does not exist. Pass the path of a Python file that defines "
                        f"score_mod(score, b, h, q_idx, kv_idx) and/or mask_mod(b, h, q_idx, kv_idx).")
    text = p.read_text()
    try:
        code = compile(text, str(p), "exec")
    except SyntaxError as e:
        line = (e.text or "").strip()
        raise SpecError(f"Spec file {path}:{e.lineno} has a syntax error: {e.msg}"
                        + (f" in `{line}`" if line else "") + ". Fix the line and run again.") from None
    # a fresh name per load: torch.compile refers to a spec's module by its name from the first compile on, so a
    # second load under the same name would leave it guarding the first load's buffers (the guard fails at once)
    name = f"kgen_spec_{abs(hash(str(p.resolve())))}_{next(_LOADS)}"
    module = types.ModuleType(name)
    module.__file__ = str(p)
    sys.modules[name] = module  # dataclasses and pickling inside a spec expect their module to be importable
    try:
        exec(code, module.__dict__)
    except Exception as e:
        raise SpecError(f"Spec file {path} failed while being loaded: {_where(e, str(p))}"
                        f"{type(e).__name__}: {e}. A spec file is run once as a module; fix the error.") from None
    return module


def _find(module, role: str, path: str, required: bool) -> Callable | None:
    fn = module.__dict__.get(role)
    if fn is None:
        if required:
            raise SpecError(f"{path} defines no {role}. It was passed as --{role.replace('_', '-')}, so it "
                            f"must define {SIGNATURE[role]}.")
        return None
    if not callable(fn):
        raise SpecError(f"{path}: {role} is a {type(fn).__name__}, not a function. Define {SIGNATURE[role]}.")
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return fn
    if len(params) != ARITY[role]:
        got = ", ".join(p.name for p in params)
        raise SpecError(f"{path}: {role}({got}) takes {len(params)} arguments, but FlexAttention calls it as "
                        f"{SIGNATURE[role]} ({ARITY[role]} arguments). Change its signature.")
    return fn


def _check_named_functions(module, path: str) -> None:
    """A file that defines functions, but neither name, probably has a typo: say so."""
    if "score_mod" in module.__dict__ or "mask_mod" in module.__dict__:
        return
    fns = [n for n, v in module.__dict__.items()
           if isinstance(v, types.FunctionType) and v.__module__ == module.__name__]
    if fns:
        raise SpecError(f"{path} defines {', '.join(f'{n}()' for n in fns)} but neither score_mod nor "
                        f"mask_mod. kgen looks for exactly those names: rename the function, or remove it "
                        f"for plain attention.")


def _collect_buffers(fn: Callable, buffers: dict[str, torch.Tensor], seen: set | None = None) -> None:
    """Module-level names the function (and helpers it calls) reads: tensors become buffers."""
    seen = set() if seen is None else seen
    if id(fn) in seen:
        return
    seen.add(id(fn))
    code, glb = fn.__code__, fn.__globals__
    names = set(_global_names(code))
    cells = dict(zip(code.co_freevars, (c.cell_contents for c in (fn.__closure__ or ()))))
    for name, value in [(n, glb[n]) for n in names if n in glb] + list(cells.items()):
        if isinstance(value, torch.Tensor):
            _add_buffer(name, value, buffers, fn)
        elif isinstance(value, types.FunctionType):
            _collect_buffers(value, buffers, seen)
        elif isinstance(value, (types.ModuleType, type, types.BuiltinFunctionType) + PLAIN_CONSTANTS):
            continue
        elif callable(value):
            continue
        else:
            raise SpecError(
                f"{fn.__code__.co_filename}: {fn.__name__} reads `{name}`, a {type(value).__name__}. Captured "
                f"values must be torch tensors or plain numbers: write `{name} = torch.tensor(...)`.")


def _global_names(code: types.CodeType):
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


def _add_buffer(name: str, tensor: torch.Tensor, buffers: dict, fn: Callable) -> None:
    if name in buffers and buffers[name] is not tensor:
        raise SpecError(f"Two spec files define a different captured tensor named `{name}`. Rename one.")
    if tensor.requires_grad:
        raise SpecError(f"{fn.__code__.co_filename}: buffer `{name}` requires grad; kgen kernels are forward-only: "
                        f"define it under torch.no_grad() or call .detach().")
    if tensor.is_complex() or tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise SpecError(f"{fn.__code__.co_filename}: buffer `{name}` has dtype {tensor.dtype}; "
                        f"use an integer, bool or float16/bfloat16/float32/float64 tensor.")
    buffers[name] = tensor  # the very object the functions read, so it can be swapped for a device copy


def index_grid(shape, q_rows: torch.Tensor, device, kv: torch.Tensor | None = None, heads=None):
    """b, h, q_idx, kv_idx as int32 tensors that broadcast to [B, H, len(q_rows), Skv]; with `heads`, a pair of
    batch and head index vectors of one length n, to [n, 1, len(q_rows), Skv] (those heads only)."""
    if heads is None:
        b = torch.arange(shape.batch, device=device, dtype=torch.int32).view(-1, 1, 1, 1)
        h = torch.arange(shape.heads, device=device, dtype=torch.int32).view(1, -1, 1, 1)
    else:
        b, h = (torch.as_tensor(i, device=device, dtype=torch.int32).view(-1, 1, 1, 1) for i in heads)
    q = q_rows.to(device=device, dtype=torch.int32).view(1, 1, -1, 1)
    if kv is None:
        kv = torch.arange(shape.kv_seq_len, device=device, dtype=torch.int32)
    return b, h, q, kv.to(device=device, dtype=torch.int32).view(1, 1, 1, -1)


def validate_on_shape(spec: Spec, shape) -> None:
    """Evaluate the functions on index tensors at the target shape; name the line that fails."""
    rows = torch.unique(torch.tensor([0, 1, shape.seq_len // 2, shape.seq_len - 2, shape.seq_len - 1]).clamp(
        0, shape.seq_len - 1))
    b, h, q, kv = index_grid(shape, rows, "cpu")
    full = (shape.batch, shape.heads, len(rows), shape.kv_seq_len)
    if spec.score_mod is not None:
        score = torch.randn(full, dtype=torch.float64)
        out = _evaluate(spec, "score_mod", score, b, h, q, kv)
        _check_result(spec, "score_mod", out, full, floating=True)
    if spec.mask_mod is not None:
        out = _evaluate(spec, "mask_mod", b, h, q, kv)
        _check_result(spec, "mask_mod", out, full, floating=False)


def covers(spec: Spec, shape) -> bool:
    """Do the functions evaluate at the shape's first and last batch, head, query and key (its captured buffers
    indexed within their ends)? Cheap at any size: only those indices are evaluated."""
    def ends(n: int, view: tuple) -> torch.Tensor:
        return torch.tensor(sorted({0, n - 1}), dtype=torch.int32).view(view)

    b, h = ends(shape.batch, (-1, 1, 1, 1)), ends(shape.heads, (1, -1, 1, 1))
    q, kv = ends(shape.seq_len, (1, 1, -1, 1)), ends(shape.kv_seq_len, (1, 1, 1, -1))
    try:
        if spec.score_mod is not None:
            _evaluate(spec, "score_mod", torch.zeros((), dtype=torch.float64), b, h, q, kv)
        if spec.mask_mod is not None:
            _evaluate(spec, "mask_mod", b, h, q, kv)
    except SpecError:
        return False
    return True


def _evaluate(spec: Spec, role: str, *args):
    fn = getattr(spec, role)
    try:
        with torch.no_grad():
            return fn(*args)
    except Exception as e:
        path = fn.__code__.co_filename
        hint = ""
        if isinstance(e, (IndexError, RuntimeError)) and "index" in str(e).lower():
            hint = " A captured buffer is indexed past its end at the target shape: make it cover every b, h, " \
                   "q_idx, kv_idx of the problem, or pass a smaller shape."
        elif "Boolean value of Tensor" in str(e) or "ambiguous" in str(e):
            hint = " The indices are tensors: use torch.where(...) instead of Python if/and/or."
        raise SpecError(f"{role} failed when evaluated on index tensors (b, h, q_idx, kv_idx are int32 tensors "
                        f"that broadcast together): {_where(e, path)}{type(e).__name__}: {e}.{hint}") from None


def _check_result(spec: Spec, role: str, out, full: tuple, floating: bool) -> None:
    if not isinstance(out, torch.Tensor):
        raise SpecError(f"{role} returned a {type(out).__name__}; it must return a tensor computed from its "
                        f"arguments (use torch ops, not Python numbers or control flow).")
    try:
        torch.broadcast_shapes(out.shape, full)
    except RuntimeError:
        raise SpecError(f"{role} returned shape {tuple(out.shape)}, which does not broadcast to the scores' shape "
                        f"{full}.") from None
    if floating and not out.is_floating_point():
        raise SpecError(f"score_mod returned {out.dtype}; it must return a floating-point score.")
    if not floating and out.dtype != torch.bool:
        raise SpecError(f"mask_mod returned {out.dtype}; it must return a bool tensor (True = keep the key).")


def _where(e: BaseException, path: str) -> str:
    """'file:line `code`: ' for the deepest frame inside the spec file, if any."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
    if not frames:
        return ""
    f = frames[-1]
    return f"{path}:{f.lineno} `{(f.line or '').strip()}`: "
