"""Row-constant terms of a score_mod: softmax cannot see them, so they need not be computed per score.

softmax(x + c) == softmax(x) for any finite c that is the same for every key of a query row. ALiBi's
`score + (kv_idx - q_idx) * slope` may therefore be computed as `score + (kv_idx - q_start) * slope`, where
q_start is one query index for the whole tile (its first row): the term becomes a [1, BN] row of the block,
computed once per block column, and the work per score drops from an integer subtract, a conversion, a
multiply and an add to one add (which the compiler fuses with the scale into an FMA). Centring on q_start
rather than dropping q_idx outright keeps the term as small as the spec's own, and so its rounding error.

The split walks only through +, -, negation, integer-to-float casts and multiplication by a float factor
that depends on b and h alone; it applies when every term without the score depends on q_idx only as q_idx itself, or not at all,
and stays as traced otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

FACTOR_OPS = {"add", "sub", "neg", "mul", "div", "true_divide", "exp", "exp2", "_to_copy", "_convert_element_type",
              "to", "alias", "clone", "view", "_unsafe_view", "reshape", "expand", "unsqueeze", "squeeze", "detach",
              "lift_fresh_copy", "lift_fresh", "scalar_tensor", "full"}


@dataclass
class Term:
    sign: int
    value: object  # an fx.Node, or a Python number
    factors: tuple = ()  # fx.Nodes or numbers that multiply it, each depending on b and h at most


@dataclass
class Group:
    """Terms without the score that share their factors: their sum is taken first, then multiplied."""
    factors: tuple
    terms: list[Term] = field(default_factory=list)


@dataclass
class CentredSum:
    score_terms: list[Term]  # terms that carry the score, kept as traced
    groups: list[Group]  # the rest, with q_idx to be read as q_start


def centre(output, deps: dict, q_idx) -> CentredSum | None:
    """The score_mod's result as score terms plus q_start-centred groups; None when that gains nothing or
    would change more than a row constant. `deps` maps nodes to what they depend on (s, b, h, q, kv)."""
    terms = _split(output, 1, (), deps)
    score_terms = [t for t in terms if "s" in _deps(t.value, deps)]
    rest = [t for t in terms if "s" not in _deps(t.value, deps)]
    if not any(t.value is q_idx for t in rest):
        return None  # no per-score q_idx term to take out
    if any("q" in _deps(t.value, deps) and t.value is not q_idx for t in rest):
        return None  # q_idx through another op (q_idx // 64...): not a row constant once split
    groups: dict[tuple, Group] = {}
    for t in rest:
        key = tuple(id(f) if isinstance(f, torch.fx.Node) else ("n", f) for f in t.factors)
        groups.setdefault(key, Group(t.factors)).terms.append(t)
    return CentredSum(score_terms, list(groups.values()))


def _deps(value, deps: dict) -> set:
    return deps.get(value, set()) if isinstance(value, torch.fx.Node) else set()


def _op(node) -> str | None:
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return None
    target = node.target
    return target.overloadpacket.__name__ if hasattr(target, "overloadpacket") else str(target)


def is_float(x) -> bool:
    if isinstance(x, torch.fx.Node):
        val = x.meta.get("val")
        return isinstance(val, torch.Tensor) and val.is_floating_point()
    return isinstance(x, float)


def _split(node, sign: int, factors: tuple, deps: dict) -> list[Term]:
    """`node` as a signed sum of terms (itself alone when it is not a sum)."""
    op = _op(node)
    if op in ("add", "sub") and node.kwargs.get("alpha", 1) == 1 and len(node.args) == 2:
        return (_split(node.args[0], sign, factors, deps)
                + _split(node.args[1], sign if op == "add" else -sign, factors, deps))
    if op == "neg":
        return _split(node.args[0], -sign, factors, deps)
    if op in ("_to_copy", "_convert_element_type") and _widens_an_integer(node):
        return _split(node.args[0], sign, factors, deps)  # (kv_idx - q_idx).float(): its sum is taken in integers
    if op == "mul" and is_float(node):  # an integer product may wrap, so it is left whole
        for x, factor in (node.args, node.args[::-1]):
            if isinstance(x, torch.fx.Node) and _is_factor(factor, deps):
                return _split(x, sign, factors + (factor,), deps)
    return [Term(sign, node, factors)]


def _widens_an_integer(node) -> bool:
    """An integer cast to float32 or float64: exact for index arithmetic, so the sum may be cast after centring."""
    val, arg = node.meta.get("val"), node.args[0]
    return (isinstance(val, torch.Tensor) and val.dtype in (torch.float32, torch.float64)
            and isinstance(arg, torch.fx.Node) and not is_float(arg))


def _is_factor(x, deps: dict) -> bool:
    """A finite number, or a float value of b and h alone built of arithmetic and exp (ALiBi's slope)."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return x == x and abs(x) != float("inf")
    return isinstance(x, torch.fx.Node) and is_float(x) and _deps(x, deps) <= {"b", "h"} and _built_of(x)


def _built_of(node) -> bool:
    if not isinstance(node, torch.fx.Node) or node.op in ("placeholder", "get_attr"):
        return True
    return _op(node) in FACTOR_OPS and all(_built_of(a) for a in node.all_input_nodes)
