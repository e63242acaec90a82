"""Hand-written candidate kernels for the verifier's tests, independent of kgen's own template.

`flash_source` renders a small FlashAttention-2 kernel for a spec (its score_mod and mask_mod written as
Triton expressions) with optional deliberate bugs. Cheats with a structure of their own live as files in
this folder and are read with `kernel_file`.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent

# Triton spellings of the shared specs: `s` is the scaled score block, `rows`/`cols` the query/key indices.
SCORES = {
    "rel_pos": "s = s + (rows[:, None] - cols[None, :]).to(tl.float32)",
    "softcap": "s = 30.0 * _tanh(s / 30.0)",
    "local_bias": "s = s - 0.5 * tl.abs(rows[:, None] - cols[None, :]).to(tl.float32)",
    "alibi": "s = s + (cols[None, :] - rows[:, None]).to(tl.float32) * tl.exp2(-((h + 1) * 8.0 / 16.0))",
}
MASKS = {
    "causal": "keep = keep & (rows[:, None] >= cols[None, :])",
    "key_padding": "keep = keep & (cols[None, :] < tl.load(kv_lengths + b))",
    "all_masked_early_rows": "keep = keep & (rows[:, None] >= cols[None, :] + 5)",
}

TEMPLATE = '''
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _attn_fwd(Q, K, V, O, kv_lengths,
              sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
              H, GROUP, SQ, SKV, sm_scale,
              BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
    pid_m = tl.program_id({m_axis})
    bh = tl.program_id({bh_axis}){wide}
    b = bh // H
    h = bh % H
    hk = h // GROUP
    rows = pid_m * BM + tl.arange(0, BM)
    dims = tl.arange(0, D)
    q_ok = {q_ok}
    q = tl.load(Q + {offsets_Q}+ rows[:, None] * sqm + dims[None, :], mask=q_ok[:, None], other=0.0)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    lo, hi = {kv_range}
    for start in range(lo, hi, BN):
        cols = start + tl.arange(0, BN)
        kv_ok = {kv_ok}
        k = tl.load(K + {offsets_K}+ cols[None, :] * skn + dims[:, None], mask=kv_ok[None, :], other=0.0)
        s = tl.dot(q, k) * sm_scale
        {score}
        keep = {keep}
        {mask}
        s = tl.where(keep, s * 1.4426950408889634, float("-inf"))
        {softmax}
        v = tl.load(V + {offsets_V}+ cols[:, None] * svn + dims[None, :], mask=kv_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(O + {offsets_O}+ rows[:, None] * som + dims[None, :], out.to(O.dtype.element_ty),
             mask=q_ok[:, None])


def attention(q, k, v, *, scale=None, **buffers):
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    o = {alloc}
    lengths = buffers.get("kv_lengths", q)
    grid = {grid}
    _attn_fwd[grid](q, k, v, o, lengths, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
                    H, H // HK, SQ, SKV, scale, BM={bm}, BN={bn}, D=D)
    return o
'''

ONLINE_SOFTMAX = """m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new"""
# No running max: exact while 2^s fits in fp32, inf (then NaN) once logits reach the hundreds.
NO_MAX_SOFTMAX = """p = tl.exp2(s)
        alpha = tl.full([BM], 1.0, tl.float32)
        l_i = l_i + tl.sum(p, 1)"""

VARIANTS = {
    "good": {},
    # bounds masks dropped: right when lengths are multiples of the block sizes, wrong otherwise
    "no_bounds": {"q_ok": "rows >= 0", "kv_ok": "cols >= 0"},
    "no_max": {"softmax": NO_MAX_SOFTMAX},
    # only the keys within 64 positions of the query block: fine while far keys weigh nothing
    "local_only": {"kv_range": "tl.maximum(pid_m * BM - 64, 0), tl.minimum(pid_m * BM + BM + 64, SKV)"},
    # padded keys past the end are loaded as zeros but not masked out of the softmax
    "padded_keys_counted": {"keep": "cols[None, :] >= 0"},
    # the output buffer is allocated once and handed out again on every call
    "shared_output": {"alloc": "_SHARED.setdefault((q.shape, q.dtype, q.device), torch.empty_like(q))"},
    # batch x heads on the grid's second axis, which takes at most 65535 programs
    "heads_on_axis_1": {"m_axis": 0, "bh_axis": 1, "grid": "(triton.cdiv(SQ, {bm}), B * H)"},
    # batch and head offsets summed in 32 bits, which wraps past 2**31 elements (a pointer plus each product
    # alone would not: Triton adds a 32-bit offset to a pointer in 64 bits)
    "int32_offsets": {"wide": "", "offsets": "({})"},
    # reads the queries of head h % 4: right for the first four heads only (offsets that wrap, in small)
    "heads_wrap": {"q_head": "h % 4"},
}


def flash_source(score: str | None = None, mask: str | None = None, variant: str = "good", bm: int = 32,
                 bn: int = 32) -> str:
    parts = {"q_ok": "rows < SQ", "kv_ok": "cols < SKV", "kv_range": "0, SKV", "keep": "kv_ok[None, :]", "softmax": ONLINE_SOFTMAX,
             "alloc": "torch.empty_like(q)", "score": SCORES.get(score, "pass"), "mask": MASKS.get(mask, "pass"),
             "bm": bm, "bn": bn, "q_head": "h",
             # batch x heads on axis 0 (past 65535 of them), offsets in 64 bits (past 2**31 elements)
             "m_axis": 1, "bh_axis": 0, "grid": f"(B * H, triton.cdiv(SQ, {bm}))", "wide": ".to(tl.int64)"}
    parts.update(VARIANTS[variant])
    parts["grid"] = parts["grid"].format(bm=bm)
    for ptr, head, stride in (("Q", f"({parts['q_head']})", "sq"), ("K", "hk", "sk"), ("V", "hk", "sv"), ("O", "h", "so")):
        parts[f"offsets_{ptr}"] = parts.get("offsets", "{}").format(f"b * {stride}b + {head} * {stride}h") + " "
    source = TEMPLATE.format(**parts)
    if variant == "shared_output":
        source = source.replace("\n\ndef attention", "\n\n_SHARED = {}\n\n\ndef attention")
    return source


HONEST_MARKER = "# <the honest _attn kernel of honest_attn.py is inserted here by kernel_file()>"


def kernel_file(name: str) -> str:
    """A fixture's source as a candidate file: the shared honest kernel inserted at its marker line."""
    text = (HERE / name).read_text()
    honest = (HERE / "honest_attn.py").read_text()
    return text.replace(HONEST_MARKER, honest[honest.index("@triton.jit"):].rstrip("\n"))


def builtin_source(spec_path: str, config_label: str) -> str:
    """The built-in kernel rendered for a spec at a config, as the search renders it ("BM64 BN128 w4 s2 tma")."""
    from agent.builtin.lower import lower_spec
    from agent.builtin.template import KernelConfig, render_kernel
    from verifier.spec import SpecFiles, load_spec

    spec = load_spec(SpecFiles(spec_path))
    return render_kernel(spec.name, lower_spec(spec), KernelConfig.from_label(config_label))


def gluon_source(spec_path: str, stages: int = 4, persistent: bool = False, block_n: int = 64,
                 block_m: int = 128) -> str:
    """The built-in Gluon kernel (warp-specialized, Hopper) rendered for a spec."""
    label = f"BM{block_m} BN{block_n} w4 s{stages} gluon"
    return builtin_source(spec_path, label + (" persistent" if persistent else ""))
