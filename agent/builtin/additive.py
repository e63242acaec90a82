"""Whether a traced score_mod is `score + bias`, the bias linear in q_idx and kv_idx.

ALiBi (`score + (kv_idx - q_idx) * slope(h)`) and relative-position biases (`score + (q_idx - kv_idx)`) have that
form. For them a kernel need not evaluate the score_mod on every score: within one key block starting at
kv_start, bias(q, kv) = bias(q, kv_start) + [bias(kv_start, kv) - bias(kv_start, kv_start)], a row vector plus a
column vector. The row part joins the online softmax's row max and exp2 offset once a row; each score costs one
multiply-add (score * scale + column). Evaluating the bias at the block's own start keeps its magnitude that of
the spec's (a distance bias is small near the diagonal), rather than of an absolute position.

The proof is over the graph make_fx traced: a form records the score's coefficient and whether a q_idx or a
kv_idx term is present; sums, differences, negation, multiplication or division by a value that reads no index,
and casts of index terms keep a form; any other op on an index or on the score does not. Linear terms are finite wherever the
spec's own scalars are, so the two evaluations of the column part cancel exactly where they should.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from agent.builtin.aten import CASTS, PASSTHROUGH, op_name



@dataclass(frozen=True)
class Form:
    """A value as `score * s + (a term linear in q_idx, if q) + (one linear in kv_idx, if kv) + a scalar`."""
    s: float = 0.0
    q: bool = False
    kv: bool = False

    @property
    def scalar(self) -> bool:
        """Reads neither the score nor an index: uniform over a tile (b, h and constants only)."""
        return self.s == 0.0 and not (self.q or self.kv)


def is_score_plus_linear_bias(gm: torch.fx.GraphModule, params: list[str]) -> bool:
    """True when the traced score_mod (placeholders named as `params`: s, b, h, q_idx, kv_idx, then buffers)
    returns exactly `score + bias` with the bias linear in q_idx and kv_idx and reading at least one of them."""
    forms: dict[torch.fx.Node, Form | None] = {}
    leaves = {"s": Form(s=1.0), "q_idx": Form(q=True), "kv_idx": Form(kv=True)}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, name in zip(placeholders, params + [None] * len(placeholders)):
        forms[node] = leaves.get(name, Form())  # b, h and buffers: no index of their own
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            forms[node] = Form()
        elif node.op == "call_function":
            forms[node] = _form_of(node, forms)
        elif node.op == "output":
            result = node.args[0]
            result = result[0] if isinstance(result, (tuple, list)) else result
            form = forms.get(result) if isinstance(result, torch.fx.Node) else None
            return form is not None and form.s == 1.0 and (form.q or form.kv)
    return False


def _form_of(node: torch.fx.Node, forms: dict) -> Form | None:
    inputs = [forms.get(n) for n in node.all_input_nodes]
    if any(f is None for f in inputs):
        return None
    if all(f.scalar for f in inputs):  # b, h, constants, buffer reads at [b, h]: uniform whatever the op
        return Form()
    op = op_name(node)
    if op in PASSTHROUGH:
        return _arg(node.args[0], forms)
    if op in CASTS:  # of index terms only: kernels pass the score as a constant when they evaluate the bias
        x = _arg(node.args[0], forms)
        return x if x.s == 0.0 else None
    if op in ("add", "sub", "rsub") and len(node.args) == 2:
        x, y = _arg(node.args[0], forms), _arg(node.args[1], forms)
        sign = (-1.0 if op != "add" else 1.0) * node.kwargs.get("alpha", 1)
        if op == "rsub":
            x, y = y, x
        return Form(s=x.s + sign * y.s, q=x.q or y.q, kv=x.kv or y.kv)
    if op == "neg":
        x = _arg(node.args[0], forms)
        return Form(s=-x.s, q=x.q, kv=x.kv)
    if op in ("mul", "div", "true_divide") and len(node.args) == 2 and node.kwargs.get("rounding_mode") is None:
        x, y = _arg(node.args[0], forms), _arg(node.args[1], forms)
        if op == "mul" and x.scalar:
            x, y = y, x
        if y.scalar and x.s == 0.0:  # index terms scaled by a tile-wide value stay linear
            return x
    return None  # anything else on the score or an index (a product of two, //, %, where, exp...): not the form


def _arg(arg, forms: dict) -> Form:
    """The form of an argument that is a node or a Python number (a number is a constant)."""
    return forms[arg] if isinstance(arg, torch.fx.Node) else Form()
