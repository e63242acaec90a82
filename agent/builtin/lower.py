"""Lower a spec's score_mod / mask_mod to Triton, the way FlexAttention's compiler does.

The functions are traced with make_fx on one-element index tensors (fake mode, so Python control flow on
indices fails loudly instead of being baked in); every aten op of the graph becomes one Triton expression
inside a @triton.jit helper:

    _score_mod(s, b, h, q_idx, kv_idx, q_ok, kv_ok, <buffer pointer and strides>...) -> s
    _mask_mod(b, h, q_idx, kv_idx, q_ok, kv_ok, <buffer pointer and strides>...) -> keep

Inside the kernel `s` is a [BM, BN] fp32 block, q_idx is [BM, 1] and kv_idx [1, BN] (int32), b and h
scalars; q_ok / kv_ok say which rows and columns are inside the problem, and mask every buffer load.
Semantics follow torch: Python-style // and %, the result dtype of every op as torch computes it.
"""
from __future__ import annotations

import traceback
import types
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from agent.builtin.additive import is_score_plus_linear_bias
from agent.builtin.aten import CASTS, PASSTHROUGH, op_name
from verifier.spec import Spec

TL_DTYPES = {torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16", torch.float32: "tl.float32",
             torch.float64: "tl.float64", torch.int8: "tl.int8", torch.int16: "tl.int16", torch.int32: "tl.int32",
             torch.int64: "tl.int64", torch.uint8: "tl.uint8", torch.bool: "tl.int1"}
INDEX_ARGS = ("b", "h", "q_idx", "kv_idx")


class LoweringError(Exception):
    """An op the built-in proposer cannot express in Triton; the message names the op and the spec line."""


SUPPORTED = ("Supported: arithmetic, comparisons, where, exp/exp2/log/tanh/sin/cos/tan/abs/pow, // and %, casts, "
             "reads of captured buffers indexed by b, h, q_idx, kv_idx.")


class _Unsupported(Exception):
    def __init__(self, op: str, target, why: str = ""):
        super().__init__(op)
        self.op, self.target, self.why = op, target, why


class _FoundOp(Exception):
    pass


def _line_of_op(fn: Callable, params: list[str], target, spec: Spec) -> str:
    """' at file:line (`code`)' where the spec calls `target`: replay the function on real tensors and stop there."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class StopAt(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func == target:
                raise _FoundOp()
            return func(*args, **(kwargs or {}))

    examples = [torch.zeros(1, dtype=torch.float32 if p == "s" else torch.int32) for p in params]
    try:
        with StopAt():
            fn(*examples)
    except _FoundOp as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename in spec.files.paths]
        if frames:
            return f" at {frames[-1].filename}:{frames[-1].lineno} (`{(frames[-1].line or '').strip()}`)"
    except Exception:  # noqa: BLE001 - only a better message was at stake
        pass
    return ""


@dataclass
class LoweredFunction:
    name: str  # _score_mod | _mask_mod
    source: str  # a @triton.jit function
    depends: set[str]  # which of s, b, h, q, kv the result depends on
    ops: list[str] = field(default_factory=list)
    # score_mod only: it returns score + a bias linear in q_idx and kv_idx (see additive.py), which a kernel may
    # add as a row vector and a column vector per key block instead of evaluating it on every score
    linear_bias: bool = False
    # mask_mod only: `_mask_cut`, the mask as a conjunction (its top-level `&`s, at most MAX_CONJUNCTS of them)
    # that can leave out the conjuncts a key block keeps whole; and how many conjuncts it has
    cut_source: str = ""
    conjuncts: int = 1
    # mask_mod only: P when one conjunct keeps only keys of one residue class mod P per query class (a dilated mask:
    # `(q_idx - kv_idx) % P == 0`), so each class is a problem of its own (1: no such conjunct); the keys of query
    # class c are those of class (key_class[0] * c + key_class[1]) mod P (their own class: (1, 0))
    residues: int = 1
    key_class: tuple[int, int] = (1, 0)


@dataclass
class LoweredSpec:
    score: LoweredFunction | None
    mask: LoweredFunction | None
    buffers: dict[str, int]  # captured tensors (name -> rank), in argument order
    helpers: str  # @triton.jit helpers the expressions call (python-style // and %, tanh...)

    def buffer_params(self) -> str:
        """`, name, name_s0, name_s1...` for every buffer: a pointer and its strides."""
        return "".join(buffer_signature(n, r) for n, r in self.buffers.items())

    def buffer_args(self, var: str = "buf") -> str:
        """Host-side arguments that match buffer_params, reading from a dict named `var`."""
        return "".join(f", {var}[{n!r}]" + "".join(f", {var}[{n!r}].stride({d})" for d in range(r))
                       for n, r in self.buffers.items())


def buffer_signature(name: str, rank: int) -> str:
    """Kernel-side names get a prefix so that a buffer called `q` or `H` cannot shadow the kernel's own."""
    return f", buf_{name}" + "".join(f", buf_{name}_s{d}" for d in range(rank))


HELPERS = '''
@triton.jit
def _py_floordiv(a, b):
    # Python's floor division on integers (Triton's // truncates toward zero)
    q = a // b
    return q - (((a % b) != 0) & ((a < 0) != (b < 0))).to(q.dtype)


@triton.jit
def _py_mod(a, b):
    # Python's modulo on integers: the result takes the sign of the divisor
    r = a % b
    return r + tl.where((r != 0) & ((r < 0) != (b < 0)), b, 0)


@triton.jit
def _tanh(x):
    if APPROX_MATH:  # the GPU's own tanh (one MUFU.TANH, relative error ~2^-11) instead of ~12 instructions
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:  # Triton's interpreter cannot run inline assembly
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _trunc(x):
    return tl.where(x >= 0, tl.floor(x), tl.ceil(x))


@triton.jit
def _round_half_even(x):
    r = tl.floor(x + 0.5)
    tie = (r - x) == 0.5
    return tl.where(tie & ((r % 2) != 0), r - 1.0, r)
'''


def lower_spec(spec: Spec) -> LoweredSpec:
    buffers = {name: spec.buffers[name].dim() for name in sorted(spec.buffers)}
    score = mask = None
    if spec.score_mod is not None:
        score = _lower(spec.score_mod, "_score_mod", ["s", *INDEX_ARGS], buffers, spec)
    if spec.mask_mod is not None:
        mask = _lower(spec.mask_mod, "_mask_mod", list(INDEX_ARGS), buffers, spec)
    return LoweredSpec(score=score, mask=mask, buffers=buffers, helpers=HELPERS)


def _trace(fn: Callable, params: list[str], buffers: dict[str, int], spec: Spec) -> torch.fx.GraphModule:
    """Trace `fn` with its captured buffers turned into graph inputs (so reads of them are visible)."""
    def rebound(*args):
        glb = dict(fn.__globals__)
        glb.update(zip(list(buffers), args[len(params):]))
        f = types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
        return f(*args[: len(params)])

    examples = [torch.zeros(1, dtype=torch.float32 if p == "s" else torch.int32) for p in params]
    examples += [spec.buffers[b] for b in buffers]
    try:
        return make_fx(rebound, tracing_mode="fake")(*examples)
    except Exception as e:  # noqa: BLE001 - every tracing failure becomes one clear message
        line = _spec_line_of_exception(e, fn)
        hint = ""
        if "data-dependent" in str(e) or "GuardOnDataDependent" in type(e).__name__:
            hint = " Python control flow (if/and/or/int()) on index tensors cannot be compiled: use torch.where."
        raise LoweringError(f"cannot trace {fn.__name__}{line}: {type(e).__name__}: {str(e).splitlines()[0]}."
                            f"{hint}") from None


def _spec_line_of_exception(e: BaseException, fn: Callable) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == fn.__code__.co_filename]
    return f" at {frames[-1].filename}:{frames[-1].lineno} (`{(frames[-1].line or '').strip()}`)" if frames else ""


def _lower(fn: Callable, name: str, params: list[str], buffers: dict[str, int], spec: Spec) -> LoweredFunction:
    gm = _trace(fn, params, buffers, spec)
    emitter = _Emitter(gm, params, list(buffers), spec)
    try:
        body = emitter.emit()
    except _Unsupported as e:
        raise LoweringError(f"the built-in proposer cannot lower {e.op}{_line_of_op(fn, params, e.target, spec)} "
                            f"to Triton{': ' + e.why if e.why else ''}. {SUPPORTED}") from None
    signature = ", ".join(params + ["q_ok", "kv_ok"]) + "".join(buffer_signature(n, r) for n, r in buffers.items())
    source = f"@triton.jit\ndef {name}({signature}):\n" + "".join(f"    {line}\n" for line in body)
    lowered = LoweredFunction(name=name, source=source, depends=emitter.result_depends, ops=emitter.ops,
                              linear_bias=name == "_score_mod" and is_score_plus_linear_bias(gm, params))
    if name == "_mask_mod":
        conjuncts = _merged(emitter.result_conjuncts)
        lowered.cut_source = _cut_source(signature, body[:-1], conjuncts)
        lowered.conjuncts = len(conjuncts)
        P, sign, shift = emitter.result_pairing
        lowered.residues, lowered.key_class = P, (sign, shift)
    return lowered


NO_PAIRING = (1, 1, 0)  # (P, sign, shift) of a mask that keeps keys outside the query's residue class pairing
MAX_CONJUNCTS = 2  # a kernel has a variant per set of conjuncts it may leave out: 2 conjuncts make 3 of them


def _merged(conjuncts: list[str]) -> list[str]:
    """At most MAX_CONJUNCTS conjuncts: the last takes in the rest."""
    head = conjuncts[:MAX_CONJUNCTS - 1]
    rest = conjuncts[MAX_CONJUNCTS - 1:]
    if len(rest) > 1:
        rest = [" & ".join(f"({c})" for c in rest)]
    return head + rest


def _cut_source(signature: str, lines: list[str], conjuncts: list[str]) -> str:
    """`_mask_cut(..., keep, WHOLE)`: keep & the mask, less the conjuncts whose bits WHOLE sets. The block map
    finds which conjuncts are true on the whole of a key block that the mask cuts: below the diagonal a dilated
    causal mask's `q_idx >= kv_idx` is, so that block needs its parity test alone. The compiler drops the code
    of a conjunct left out."""
    tests = "".join(f"    if (WHOLE & {1 << i}) == 0:\n        keep = keep & ({c})\n" for i, c in enumerate(conjuncts))
    return (f"@triton.jit\ndef _mask_cut({signature}, keep, WHOLE: tl.constexpr):\n"
            + "".join(f"    {line}\n" for line in lines) + tests + "    return keep\n")


def _unwrapped(node):
    """`node` without the casts and copies that do not change its value (PASSTHROUGH ops)."""
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and op_name(node) in PASSTHROUGH:
        node = node.args[0]
    return node


def _is_call(node, *names: str) -> bool:
    """Whether `node` calls one of the ops `names`."""
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and op_name(node) in names


class _Emitter:
    """Walks the graph in order; each node becomes `tN = <expr>`, cast to the dtype torch gives it."""

    def __init__(self, gm: torch.fx.GraphModule, params: list[str], buffers: list[str], spec: Spec):
        self.gm, self.params, self.buffers, self.spec = gm, params, buffers, spec
        self.names: dict[torch.fx.Node, str] = {}
        self.deps: dict[torch.fx.Node, set[str]] = {}
        self.lines: list[str] = []
        self.ops: list[str] = []
        self.result_depends: set[str] = set()
        self.result_conjuncts: list[str] = []
        self.result_pairing = NO_PAIRING

    def emit(self) -> list[str]:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        for node, param in zip(placeholders, self.params + [f"buf_{b}" for b in self.buffers]):
            self.names[node] = param
            self.deps[node] = {"s": {"s"}, "b": {"b"}, "h": {"h"}, "q_idx": {"q"}, "kv_idx": {"kv"}}.get(param, set())
        for node in self.gm.graph.nodes:
            if node.op == "call_function":
                self._call(node)
            elif node.op == "get_attr":
                self._constant(node)
            elif node.op == "output":
                result = node.args[0]
                result = result[0] if isinstance(result, (tuple, list)) else result
                self.result_depends = self.deps.get(result, set())
                conjuncts = self._conjuncts(result)
                self.result_conjuncts = [self._ref(c) for c in conjuncts]
                self.result_pairing = max((self._residue_pairing(c) for c in conjuncts), key=lambda p: p[0])
                self.lines.append(f"return {self._ref(result)}")
        return self.lines

    def _conjuncts(self, value) -> list:
        """The terms of `value` as a top-level `a & b & ...` of booleans (itself, less its casts, if it is not one)."""
        node = _unwrapped(value)
        if _is_call(node, "bitwise_and", "logical_and") and all(
                isinstance(a, torch.fx.Node) and _is_bool(a) for a in node.args[:2]):
            return self._conjuncts(node.args[0]) + self._conjuncts(node.args[1])
        return [node]

    def _residue_pairing(self, conjunct) -> tuple[int, int, int]:
        """(P, sign, shift) when the conjunct is true exactly when kv_idx = sign * q_idx + shift (mod P), P a constant
        of 2 or more: `(q_idx - kv_idx) % P == j` (kv = q - j), `(kv_idx - q_idx) % P == j` (kv = q + j) and
        `(q_idx + kv_idx) % P == j` (kv = j - q), for a constant 0 <= j < P, and `q_idx % P == kv_idx % P`; else
        NO_PAIRING. The kernel skips every key outside the class paired with the query's, so a form is listed here
        only when that is exact for all integers. Mod 2, -q is q's own class: the sign is then always 1."""
        node = _unwrapped(conjunct)
        if not (_is_call(node, "eq") and len(node.args) == 2):
            return NO_PAIRING
        left, right = node.args if type(node.args[0]) is not int else node.args[::-1]
        if type(right) is int and (mod := self._remainder(left)) and 0 <= right < mod[1]:
            (operand, P), j = mod, right
            pairing = {"q-kv": (1, -j), "kv-q": (1, j), "q+kv": (-1, j)}.get(self._index_combination(operand))
            if pairing is None:
                return NO_PAIRING
            sign, shift = pairing
            return P, 1 if P == 2 else sign, shift % P
        mods = self._remainder(left), self._remainder(right)
        if all(mods) and mods[0][1] == mods[1][1] and self._are_the_indices(mods[0][0], mods[1][0]):
            return mods[0][1], 1, 0
        return NO_PAIRING

    def _remainder(self, value) -> tuple | None:
        """(x, P) for `x % P` with P an int constant of 2 or more."""
        node = _unwrapped(value)
        if _is_call(node, "remainder") and type(node.args[1]) is int and node.args[1] >= 2:
            return _unwrapped(node.args[0]), node.args[1]
        return None

    def _index_combination(self, value) -> str | None:
        """"q-kv", "kv-q" or "q+kv" where `value` is q_idx and kv_idx subtracted or added (no scaling); else None."""
        node = _unwrapped(value)
        if not (_is_call(node, "sub", "add") and len(node.args) == 2 and node.kwargs.get("alpha", 1) == 1
                and self._are_the_indices(*node.args)):
            return None
        if _is_call(node, "add"):
            return "q+kv"
        return "q-kv" if self.names.get(_unwrapped(node.args[0])) == "q_idx" else "kv-q"

    def _are_the_indices(self, a, b) -> bool:
        """Whether a and b are q_idx and kv_idx, in either order."""
        return sorted(str(self.names.get(_unwrapped(x))) for x in (a, b)) == ["kv_idx", "q_idx"]

    # ------------------------------------------------------------------------------------------ helpers
    def _ref(self, arg) -> str:
        if isinstance(arg, torch.fx.Node):
            return self.names[arg]
        if isinstance(arg, bool):
            return "True" if arg else "False"
        if isinstance(arg, float):
            return repr(arg) if arg == arg and abs(arg) != float("inf") else f'float("{arg}")'
        if isinstance(arg, int):
            return str(arg)
        raise LoweringError(f"unsupported constant {arg!r}")

    def _arg_deps(self, node: torch.fx.Node) -> set[str]:
        found = set()
        for a in node.all_input_nodes:
            found |= self.deps.get(a, set())
        return found

    def _unsupported(self, node: torch.fx.Node, why: str = "") -> "_Unsupported":
        return _Unsupported(str(node.target), node.target, why)

    def _assign(self, node: torch.fx.Node, expr: str) -> None:
        name = f"t{len(self.names)}"
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype in TL_DTYPES:
            if _is_number(expr):  # a Python number has no .to(): torch.where(c, 0.0, -1.0) traces to these
                expr = f"tl.full([], {expr}, {TL_DTYPES[val.dtype]})"
            else:
                expr = f"({expr}).to({TL_DTYPES[val.dtype]})"
        self.lines.append(f"{name} = {expr}")
        self.names[node] = name
        self.deps[node] = self._arg_deps(node)

    def _constant(self, node: torch.fx.Node) -> None:
        value = getattr(self.gm, node.target)
        for name, tensor in self.spec.buffers.items():
            if isinstance(value, torch.Tensor) and value.shape == tensor.shape and value.dtype == tensor.dtype \
                    and torch.equal(value, tensor):
                self.names[node], self.deps[node] = f"buf_{name}", set()
                return
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            self.names[node], self.deps[node] = self._ref(value.item()), set()
            return
        raise LoweringError(f"a tensor constant of shape {tuple(value.shape)} is created inside the spec function; "
                            f"define it at module level so it is passed as a captured buffer")

    # --------------------------------------------------------------------------------------------- ops
    def _call(self, node: torch.fx.Node) -> None:
        op = op_name(node)
        self.ops.append(op)
        a = [self._ref(x) if not isinstance(x, (list, tuple, torch.dtype, type(None))) else x for x in node.args]
        kw = node.kwargs
        if op in PASSTHROUGH:
            self.names[node], self.deps[node] = self._ref(node.args[0]), self._arg_deps(node)
            return
        if op in UNARY:
            return self._assign(node, UNARY[op].format(a[0]))
        if op in BINARY:
            x, y = a[0], a[1]
            if op in ("add", "sub") and kw.get("alpha", 1) != 1:
                y = f"{kw['alpha']} * {y}"
            if op == "div" and kw.get("rounding_mode") == "floor":
                return self._assign(node, self._floordiv(node, x, y))
            if op == "div" and kw.get("rounding_mode") == "trunc":
                return self._assign(node, f"_trunc(({x}) / ({y}))" if self._is_float(node) else f"({x}) // ({y})")
            if op == "div":
                return self._assign(node, f"({x}).to(tl.float32) / ({y})" if not self._is_float(node.args[0])
                                    and not self._is_float(node.args[1]) else f"({x}) / ({y})")
            return self._assign(node, BINARY[op].format(x, y))
        if op == "floor_divide":
            return self._assign(node, self._floordiv(node, a[0], a[1]))
        if op == "remainder":
            if self._is_float(node):
                return self._assign(node, f"({a[0]}) - ({a[1]}) * tl.floor(({a[0]}) / ({a[1]}))")
            shift = _power_of_two(node.args[1])
            if shift is not None:  # two's complement: a & (2^k - 1) is Python's a % 2^k, negatives included
                return self._assign(node, f"({a[0]}) & {(1 << shift) - 1}")
            return self._assign(node, f"_py_mod({a[0]}, {a[1]})")
        if op == "where":
            return self._assign(node, f"tl.where({a[0]}, {a[1]}, {a[2]})")
        if op in ("clamp", "clamp_min", "clamp_max"):
            return self._assign(node, self._clamp(op, a, node))
        if op == "pow":
            return self._assign(node, self._pow(node, a[0], a[1]))
        if op in CASTS:
            return self._assign(node, a[0])  # _assign casts to the traced dtype
        if op in ("scalar_tensor", "full"):
            value = node.args[0] if op == "scalar_tensor" else node.args[1]
            return self._assign(node, self._ref(value))
        if op == "index":
            return self._index(node)
        if op == "select":
            raise self._unsupported(node, "a constant integer index into a buffer; index it with b, h, q_idx or kv_idx")
        raise self._unsupported(node)

    def _is_float(self, x) -> bool:
        if isinstance(x, torch.fx.Node):
            val = x.meta.get("val")
            return isinstance(val, torch.Tensor) and val.is_floating_point()
        return isinstance(x, float)

    def _floordiv(self, node, x, y) -> str:
        if self._is_float(node):
            return f"tl.floor(({x}) / ({y}))"
        shift = _power_of_two(node.args[1])
        if shift is not None:  # an arithmetic shift floors, as Python's // does
            return f"({x}) >> {shift}"
        return f"_py_floordiv({x}, {y})"

    def _clamp(self, op: str, a: list, node) -> str:
        lo = a[1] if op in ("clamp", "clamp_min") else None
        hi = a[2] if op == "clamp" and len(a) > 2 else (a[1] if op == "clamp_max" else None)
        if op == "clamp" and "max" in node.kwargs:
            hi = self._ref(node.kwargs["max"])
        expr = a[0]
        if lo is not None:
            expr = f"tl.maximum({expr}, {lo})"
        if hi is not None:
            expr = f"tl.minimum({expr}, {hi})"
        return expr

    def _pow(self, node, base: str, exponent) -> str:
        raw = node.args[1]
        if isinstance(raw, (int, float)) and float(raw).is_integer() and 0 <= raw <= 8:
            return " * ".join([f"({base})"] * int(raw)) if raw else "1.0"
        if isinstance(raw, (int, float)) and raw == 0.5:
            return f"tl.sqrt(({base}).to(tl.float32))"
        if isinstance(node.args[0], (int, float)):  # scalar ** tensor
            return f"tl.exp2(({exponent}) * {float(torch.log2(torch.tensor(float(node.args[0]))))})"
        return f"tl.exp2(({exponent}) * tl.log2(({base}).to(tl.float32)))"

    def _index(self, node: torch.fx.Node) -> None:
        buf_node, indices = node.args
        if not isinstance(buf_node, torch.fx.Node) or self.names.get(buf_node) not in [f"buf_{b}" for b in self.buffers]:
            raise self._unsupported(node, "only captured buffers can be indexed")
        if any(i is None for i in indices):
            raise self._unsupported(node, "indexing with None/':' before a tensor index")
        buf = self.names[buf_node]
        offset = " + ".join(f"({self._ref(i)}).to(tl.int64) * {buf}_s{d}" for d, i in enumerate(indices))
        self._load(node, buf, offset, set().union(*(self.deps.get(i, set()) for i in indices)))

    def _load(self, node: torch.fx.Node, buf: str, offset: str, deps: set[str]) -> None:
        guards = [g for g, d in (("q_ok", "q"), ("kv_ok", "kv")) if d in deps]
        mask = " & ".join(guards)
        expr = f"tl.load({buf} + {offset}" + (f", mask={mask}, other=0)" if mask else ")")
        self._assign(node, expr)
        self.deps[node] = deps


def _is_bool(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype == torch.bool


def _is_number(expr: str) -> bool:
    """Whether `expr` is a Python number literal as _ref writes it (float("inf") included)."""
    try:
        float(expr)
        return True
    except ValueError:
        return expr.startswith("float(")


def _power_of_two(divisor) -> int | None:
    """k when the divisor is the constant 2**k (k >= 0), else None."""
    if isinstance(divisor, int) and not isinstance(divisor, bool) and divisor > 0 and divisor & (divisor - 1) == 0:
        return divisor.bit_length() - 1
    return None


UNARY = {
    "neg": "-({})", "abs": "tl.abs({})", "exp": "tl.exp(({}).to(tl.float32))", "exp2": "tl.exp2(({}).to(tl.float32))",
    "log": "tl.log(({}).to(tl.float32))", "log2": "tl.log2(({}).to(tl.float32))", "sqrt": "tl.sqrt(({}).to(tl.float32))",
    "rsqrt": "tl.rsqrt(({}).to(tl.float32))", "sin": "tl.sin(({}).to(tl.float32))",
    "cos": "tl.cos(({}).to(tl.float32))", "tan": "tl.sin(({0}).to(tl.float32)) / tl.cos(({0}).to(tl.float32))",
    "tanh": "_tanh(({}).to(tl.float32))", "sigmoid": "tl.sigmoid(({}).to(tl.float32))",
    "erf": "tl.erf(({}).to(tl.float32))", "floor": "tl.floor({})", "ceil": "tl.ceil({})", "trunc": "_trunc({})",
    "round": "_round_half_even({})", "reciprocal": "1.0 / ({})", "sign": "tl.where(({0}) > 0, 1, tl.where(({0}) < 0, -1, 0))",
    "log1p": "tl.log(1.0 + ({}).to(tl.float32))", "expm1": "tl.exp(({}).to(tl.float32)) - 1.0",
    "bitwise_not": "~({})", "logical_not": "({}) == 0", "square": "({0}) * ({0})",
}
BINARY = {
    "add": "({}) + ({})", "sub": "({}) - ({})", "rsub": "({1}) - ({0})", "mul": "({}) * ({})", "div": "({}) / ({})",
    "true_divide": "({}) / ({})", "fmod": "({}) % ({})", "eq": "({}) == ({})", "ne": "({}) != ({})",
    "lt": "({}) < ({})", "le": "({}) <= ({})", "gt": "({}) > ({})", "ge": "({}) >= ({})",
    "bitwise_and": "({}) & ({})", "bitwise_or": "({}) | ({})", "bitwise_xor": "({}) ^ ({})",
    "logical_and": "(({}) != 0) & (({}) != 0)", "logical_or": "(({}) != 0) | (({}) != 0)",
    "logical_xor": "(({}) != 0) ^ (({}) != 0)", "minimum": "tl.minimum({}, {})", "maximum": "tl.maximum({}, {})",
    "fmin": "tl.minimum({}, {})", "fmax": "tl.maximum({}, {})",
}
