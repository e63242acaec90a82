"""Static checks: each reason code from a tiny source, and the good kernels pass."""
from __future__ import annotations

import textwrap

import pytest

from kernels import MASKS, SCORES, VARIANTS, flash_source, gluon_source
from verifier.static import check_source

HEADER = """
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _kernel(X):
    pass
"""


def tiny(body: str, imports: str = "") -> str:
    """A kernel file whose `attention` runs `body` (indented for it) before returning q."""
    return (imports + HEADER + "\n\ndef attention(q, k, v, *, scale=None, **buffers):\n"
            + textwrap.indent(textwrap.dedent(body).strip() + "\n", "    ") + "    return q\n")


def code(source: str) -> str | None:
    result, _ = check_source(source)
    assert result.stage == "static"
    assert result.ok or result.message  # a rejection always says why
    return result.reason


def test_syntax_error_names_the_line():
    result, _ = check_source(tiny("x = (1,"))
    assert result.reason == "syntax_error"
    assert "line" in result.message and result.details["line"] >= 14


@pytest.mark.parametrize("source", [
    HEADER,  # no attention at all
    HEADER + "\n\nclass attention:\n    pass\n",
    HEADER + "\n\ndef attention(q, k):\n    return q\n",  # too few positional arguments
    HEADER + "\n\ndef attention(q, k, v):\n    return q\n",  # no scale keyword
], ids=["absent", "a class", "two arguments", "no scale"])
def test_missing_entry_point(source):
    assert code(source) == "missing_entry_point"


def test_no_triton_kernel():
    assert code("import torch\n\n\ndef attention(q, k, v, *, scale=None, **buffers):\n    return q.clone()\n") \
        == "no_triton_kernel"


@pytest.mark.parametrize("body, imports", [
    ("torch.matmul(q, k.transpose(-1, -2))", ""),
    ("F.scaled_dot_product_attention(q, k, v)", "import torch.nn.functional as F\n"),
    ("scaled_dot_product_attention(q, k, v)", "from torch.nn.functional import scaled_dot_product_attention\n"),
    ("s = q @ k.transpose(-1, -2)", ""),
    ("fast = torch.compile(lambda x: x)", ""),
    ("q.softmax(-1)", ""),
    ("torch.einsum('bhqd,bhkd->bhqk', q, k)", ""),
    ("x = q.float().numpy()", ""),
    ("pass", "import numpy as np\n"),
], ids=["torch.matmul", "F.sdpa", "sdpa imported by name", "@", "torch.compile", ".softmax", "einsum", ".numpy",
        "import numpy"])
def test_forbidden_call(body, imports):
    assert code(tiny(body, imports)) == "forbidden_call"


@pytest.mark.parametrize("body", ["s = torch.cuda.Stream()", "with torch.cuda.stream(None):\n    pass"])
def test_side_stream(body):
    assert code(tiny(body)) == "side_stream"


@pytest.mark.parametrize("body, imports", [
    ("torch.cuda.synchronize = lambda: None", ""),
    ("try:\n    pass\nexcept:\n    pass", ""),
    ("try:\n    pass\nexcept Exception:\n    pass", ""),
    ("pass", "import threading\n"),
    ("pass", "import sys\n"),
    ("eval('1')", ""),
    ("name = 'mm'\nf = getattr(torch, name)", ""),
    ("torch.os._exit(0)", ""),  # os reached through torch's namespace
    ("torch.sys.exit(1)", ""),
    ("T.threading.Thread(target=print).start()", "import torch as T\n"),
    ("pass", "from torch import multiprocessing\n"),
], ids=["patch synchronize", "bare except", "except Exception", "import threading", "import sys", "eval",
        "computed getattr", "torch.os", "torch.sys", "alias.threading", "from torch import multiprocessing"])
def test_tampering(body, imports):
    assert code(tiny(body, imports)) == "tampering"


@pytest.mark.parametrize("body, imports", [
    ("pass", "import gc\n"),
    ("data = open('/proc/self/maps').read()", ""),
    ("g = globals()", ""),
    ("pass", "import inspect\n"),
    ("frames = torch.inspect.stack()", ""),
], ids=["import gc", "open()", "globals()", "import inspect", "torch.inspect"])
def test_snooping(body, imports):
    assert code(tiny(body, imports)) == "snooping"


@pytest.mark.parametrize("score", [None, *SCORES])
@pytest.mark.parametrize("mask", [None, *MASKS])
def test_good_kernels_pass(score, mask):
    result, facts = check_source(flash_source(score, mask))
    assert result.ok, result.message
    assert facts.jit_functions == ["_tanh", "_attn_fwd"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_numerically_buggy_variants_pass_static(variant):
    """Their bugs are for the later stages to find; the static check must not guess at them."""
    assert check_source(flash_source(variant=variant))[0].ok


def test_host_code_may_use_plain_torch_and_attributes_named_like_modules():
    source = tiny("""
        o = torch.empty_like(q)
        lengths = buffers.get("kv_lengths", q)
        config = type("Config", (), {"time": 1, "io": 2})
        steps = config.time + config.io + math.ceil(q.shape[2] / 64)
        _kernel[(steps,)](o)
        """)
    assert code(source) is None


def test_torch_calls_inside_a_triton_kernel_are_not_host_code():
    source = HEADER.replace("    pass\n", "    x = tl.load(X)\n    tl.store(X, tl.sum(x @ x, 0))\n") + \
        "\n\ndef attention(q, k, v, *, scale=None, **buffers):\n    return q\n"
    assert code(source) is None


def test_a_gluon_kernel_is_a_triton_kernel(specs):
    """Gluon (triton.experimental.gluon) is Triton's lower-level dialect: its @gluon.jit functions are kernels."""
    result, facts = check_source(gluon_source(str(specs / "rel_pos.py")))
    assert result.ok, result.message
    assert {"_attn_fwd", "_loader", "_consumer", "_score_mod"} <= set(facts.jit_functions)


def test_a_gluon_alias_of_something_else_is_not_a_kernel():
    source = ("import torch\nimport triton.language as gluon\n\n\n@gluon.jit\ndef k(x):\n    pass\n\n\n"
              "def attention(q, k, v, *, scale=None, **buffers):\n    return q.clone()\n")
    assert code(source) == "no_triton_kernel"


def test_gluon_is_known_from_imports_not_from_mentions(specs):
    assert check_source(gluon_source(str(specs / "noop.py")))[1].gluon
    assert not check_source(flash_source() + "\n# triton.experimental.gluon would need a GPU\n")[1].gluon
