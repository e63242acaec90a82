"""Checks on the candidate's source before anything runs: it parses, has the entry point and a Triton
kernel, imports only what a kernel needs, and calls no library attention or matmul from host code."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

from verifier.verdict import StageResult

ALLOWED_IMPORTS = {"torch", "triton", "math", "functools", "typing", "dataclasses", "itertools", "operator",
                   "collections", "enum", "__future__", "numbers", "warnings"}
# Modules whose only use in a kernel file would be to look around the process or escape it.
SNOOPING_MODULES = {"gc", "inspect", "io", "pathlib", "glob", "mmap", "pickle", "shutil", "tempfile"}
TAMPERING_MODULES = {"threading", "multiprocessing", "subprocess", "concurrent", "asyncio", "signal", "os",
                     "sys", "ctypes", "cffi", "builtins", "importlib", "atexit", "socket", "time"}

# Host-code calls that do the problem's math with a library instead of the candidate's Triton kernels.
FORBIDDEN_TORCH = ("torch.matmul", "torch.mm", "torch.bmm", "torch.baddbmm", "torch.addmm", "torch.addbmm",
                   "torch.einsum", "torch.tensordot", "torch.softmax", "torch.log_softmax", "torch.nn.functional",
                   "torch.nn.attention", "torch.compile", "torch._dynamo", "torch._inductor", "torch.ops",
                   "torch._C", "torch.backends", "torch.utils.cpp_extension", "torch.jit", "torch.fx",
                   "torch.library", "torch.func", "torch.vmap", "torch.special.softmax", "torch.linalg")
SIDE_STREAM_TORCH = ("torch.cuda.Stream", "torch.cuda.stream", "torch.cuda.set_stream", "torch.cuda.ExternalStream",
                     "torch.cuda.graph", "torch.cuda.CUDAGraph", "torch.cuda.StreamContext")
TAMPERING_TORCH = ("torch.cuda.Event", "torch.cuda.synchronize", "torch.cuda.memory", "torch.cuda.set_per_process",
                   "torch.cuda.empty_cache", "triton.testing")
FORBIDDEN_METHODS = {"matmul", "mm", "bmm", "baddbmm", "addmm", "einsum", "softmax", "log_softmax", "cpu",
                     "numpy", "tolist", "__matmul__"}
SNOOPING_BUILTINS = {"open", "globals", "vars", "locals", "breakpoint", "input"}
TAMPERING_BUILTINS = {"eval", "exec", "compile", "__import__", "setattr", "delattr"}
GLUON = "triton.experimental.gluon"  # Triton's lower-level dialect: its kernels are Triton kernels too


@dataclass
class SourceFacts:
    """What the verifier learns from the source and later uses (kernel names for profiling)."""

    jit_functions: list[str] = field(default_factory=list)
    gluon: bool = False  # kernels written in Gluon, which Triton's CPU interpreter cannot run


def check_source(source: str, filename: str = "kernel.py") -> tuple[StageResult, SourceFacts]:
    facts = SourceFacts()
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as e:
        line = (e.text or "").rstrip()
        return StageResult.failed("static", "syntax_error",
                                  f"SyntaxError at line {e.lineno}: {e.msg}" + (f"\n    {line}" if line else ""),
                                  line=e.lineno), facts
    entry = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "attention"), None)
    if entry is None:
        return StageResult.failed("static", "missing_entry_point",
                                  "The file must define a module-level function "
                                  "`attention(q, k, v, *, scale=None, **buffers)` that returns the output."), facts
    problem = _signature_problem(entry)
    if problem:
        return StageResult.failed("static", "missing_entry_point", problem), facts
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    gluon_aliases = {name for n in imports for name, path in _bindings(n) if path == GLUON}
    facts.jit_functions = _jit_functions(tree, gluon_aliases)
    imported = [a.name for n in imports if isinstance(n, ast.Import) for a in n.names] + \
        [path for n in imports if isinstance(n, ast.ImportFrom) for _, path in _bindings(n)]
    facts.gluon = any(path.startswith(GLUON) for path in imported)
    if not facts.jit_functions:
        return StageResult.failed("static", "no_triton_kernel",
                                  "No @triton.jit (or Gluon @gluon.jit) function found: the attention must be "
                                  "computed by a Triton kernel defined in this file."), facts
    finding = _Scanner(set(facts.jit_functions)).scan(tree)
    if finding:
        code, line, what = finding
        return StageResult.failed("static", code, f"line {line}: {what}", line=line), facts
    return StageResult.passed("static", f"Triton kernels: {', '.join(facts.jit_functions)}",
                              jit_functions=facts.jit_functions), facts


def _signature_problem(fn: ast.FunctionDef) -> str | None:
    a = fn.args
    positional = [p.arg for p in a.posonlyargs + a.args]
    if len(positional) < 3:
        return (f"attention({', '.join(positional)}) must take q, k, v positionally: "
                f"define attention(q, k, v, *, scale=None, **buffers).")
    names = positional + [p.arg for p in a.kwonlyargs]
    if "scale" not in names:
        return "attention must accept a `scale=None` keyword (None means 1/sqrt(head_dim))."
    return None


def _decorator_name(d: ast.expr) -> str:
    target = d.func if isinstance(d, ast.Call) else d
    return _dotted(target) or ""


def _jit_functions(tree: ast.Module, gluon_aliases: set[str]) -> list[str]:
    """Functions under `@triton.jit` (or `jit` from triton), or under Gluon's `@gluon.jit`, Triton's lower-level
    dialect (explicit layouts, mbarriers, warp specialization), where `gluon` names triton.experimental.gluon."""
    jit_decorators = {"jit"} | {f"{alias}.jit" for alias in gluon_aliases}
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            decos = [_decorator_name(d) for d in node.decorator_list]
            if any(d in jit_decorators or (d.startswith("triton.") and d.endswith(".jit")) for d in decos):
                names.append(node.name)
    return names


def _bindings(node: ast.Import | ast.ImportFrom) -> list[tuple[str, str]]:
    """(local name, dotted path it names) for each name an import statement binds, as Python binds them."""
    if isinstance(node, ast.Import):
        return [((a.asname or a.name).split(".")[0], a.name if a.asname else a.name.split(".")[0])
                for a in node.names]
    return [(a.asname or a.name, f"{node.module or ''}.{a.name}") for a in node.names]


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Scanner(ast.NodeVisitor):
    """Walks host code (not @triton.jit bodies) and reports the first forbidden construct."""

    def __init__(self, jit_names: set[str]):
        self.jit_names = jit_names
        self.aliases: dict[str, str] = {}  # local name -> dotted module path
        self.finding: tuple[str, int, str] | None = None

    def scan(self, tree: ast.Module):
        self.visit(tree)
        return self.finding

    def report(self, code: str, node: ast.AST, what: str) -> None:
        if self.finding is None:
            self.finding = (code, getattr(node, "lineno", 0), what)

    def resolve(self, node: ast.expr) -> str | None:
        dotted = _dotted(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        base = self.aliases.get(head, head)
        return f"{base}.{rest}" if rest else base

    def visit_FunctionDef(self, node: ast.FunctionDef):
        if node.name in self.jit_names:
            return  # device code: tl.* calls are the point
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self._check_module(alias.name, node)
        self.aliases.update(_bindings(node))

    def visit_ImportFrom(self, node: ast.ImportFrom):
        module = node.module or ""
        self._check_module(module, node)
        bound = _bindings(node)
        for _, full in bound:
            self._check_dotted(full, node)
            self._check_reached_module(full, node)
        self.aliases.update(bound)

    def _check_module(self, module: str, node: ast.AST) -> None:
        root = module.split(".")[0]
        if root in SNOOPING_MODULES:
            self.report("snooping", node, f"`import {module}`: a kernel file has no use for {root}; the verifier "
                                          f"rejects code that inspects the process or files.")
        elif root in TAMPERING_MODULES:
            self.report("tampering", node, f"`import {module}`: threads, processes, timers and interpreter "
                                           f"internals are off limits in a kernel file.")
        elif root not in ALLOWED_IMPORTS:
            self.report("forbidden_call", node, f"`import {module}`: a kernel file may import only "
                                                f"{', '.join(sorted(ALLOWED_IMPORTS))}.")
        else:
            self._check_dotted(module, node)

    def _check_dotted(self, dotted: str, node: ast.AST) -> None:
        def under(prefixes):
            return any(dotted == p or dotted.startswith(p + ".") for p in prefixes)

        if under(FORBIDDEN_TORCH):
            self.report("forbidden_call", node, f"`{dotted}`: compute the attention in your own Triton kernel; "
                                                f"library matmul, softmax, attention and compilers are not allowed.")
        elif under(SIDE_STREAM_TORCH):
            self.report("side_stream", node, f"`{dotted}`: launch every kernel on the caller's current stream.")
        elif under(TAMPERING_TORCH):
            self.report("tampering", node, f"`{dotted}`: a kernel file must not touch events, synchronization, "
                                           f"memory settings or Triton's benchmarking tools.")

    def _check_reached_module(self, dotted: str, node: ast.AST) -> None:
        """torch imports os, sys, threading...: `torch.os._exit` is `import os` by another name."""
        for part in dotted.split(".")[1:]:
            if part in SNOOPING_MODULES or part in TAMPERING_MODULES:
                code = "snooping" if part in SNOOPING_MODULES else "tampering"
                self.report(code, node, f"`{dotted}` reaches the {part} module through another one; a kernel file "
                                        f"must not use {part}, by any name.")
                return

    def visit_Attribute(self, node: ast.Attribute):
        resolved = self.resolve(node)
        if resolved:
            self._check_dotted(resolved, node)
            if _dotted(node).split(".")[0] in self.aliases:  # rooted in an import, not a local's attribute
                self._check_reached_module(resolved, node)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name):
        resolved = self.aliases.get(node.id)
        if resolved:
            self._check_dotted(resolved, node)

    def visit_Call(self, node: ast.Call):
        func = node.func
        if isinstance(func, ast.Name):
            if func.id in SNOOPING_BUILTINS:
                self.report("snooping", node, f"`{func.id}()` is not allowed in a kernel file.")
            elif func.id in TAMPERING_BUILTINS:
                self.report("tampering", node, f"`{func.id}()` is not allowed in a kernel file.")
            elif func.id == "getattr" and len(node.args) > 1 and not isinstance(node.args[1], ast.Constant):
                self.report("tampering", node, "getattr() with a computed name hides what is called; "
                                               "write the attribute out.")
        elif isinstance(func, ast.Attribute) and func.attr in FORBIDDEN_METHODS and not self._is_module(func):
            self.report("forbidden_call", node, f"`.{func.attr}()` on a tensor: the attention must be computed "
                                                f"in your Triton kernel, on the GPU, not with torch ops.")
        self.generic_visit(node)

    def _is_module(self, func: ast.Attribute) -> bool:
        resolved = self.resolve(func.value)
        return bool(resolved) and resolved.split(".")[0] in ("triton", "math")

    def visit_BinOp(self, node: ast.BinOp):
        if isinstance(node.op, ast.MatMult):
            self.report("forbidden_call", node, "`@` in host code is a torch matmul: do the matmuls with tl.dot "
                                                "inside your Triton kernel.")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign):
        for target in node.targets:
            self._check_target(target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign):
        self._check_target(node.target)
        self.generic_visit(node)

    def _check_target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Attribute):
            root = self.resolve(target)
            if root and root.split(".")[0] in ("torch", "triton", "math", "functools"):
                self.report("tampering", target, f"assigning `{_dotted(target)}` patches a library the "
                                                 f"verifier relies on.")

    def visit_Try(self, node: ast.Try):
        for handler in node.handlers:
            caught = _dotted(handler.type) if handler.type is not None else None
            if handler.type is None or caught in ("Exception", "BaseException"):
                self.report("tampering", handler, "a bare `except`/`except Exception` hides failures (and invites "
                                                  "a fallback path); let errors surface to the verifier.")
        self.generic_visit(node)

    visit_TryStar = visit_Try
