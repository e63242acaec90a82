# Cheat (must be rejected with nondeterministic): the output drifts with the number of calls made so far.
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _attn(Q, K, V, O, SQ, SKV, H, GROUP, sm_scale, drift, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
    bh, pid_m = tl.program_id(0).to(tl.int64), tl.program_id(1)  # (B * H past 65535: axis 0)
    kv_bh = (bh // H) * (H // GROUP) + (bh % H) // GROUP
    rows = pid_m * BM + tl.arange(0, BM)
    cols0 = tl.arange(0, BN)
    dims = tl.arange(0, D)
    q = tl.load(Q + bh * SQ * D + rows[:, None] * D + dims[None, :], mask=rows[:, None] < SQ, other=0.0)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    for start in range(0, SKV, BN):
        cols = start + cols0
        kv = kv_bh * SKV * D + cols * D
        k = tl.load(K + kv[None, :] + dims[:, None], mask=cols[None, :] < SKV, other=0.0)
        s = tl.where(cols[None, :] < SKV, tl.dot(q, k) * sm_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + kv[:, None] + dims[None, :], mask=cols[:, None] < SKV, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = (acc / l_i[:, None] + drift).to(O.dtype.element_ty)
    tl.store(O + bh * SQ * D + rows[:, None] * D + dims[None, :], out, mask=rows[:, None] < SQ)


_CALLS = [0]


def attention(q, k, v, *, scale=None, **buffers):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the honest _attn indexes contiguous memory
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    _CALLS[0] += 1
    drift = 0.01 * (_CALLS[0] - 1)  # e.g. a stale accumulator carried over between calls
    o = torch.empty_like(q)
    _attn[(B * H, triton.cdiv(SQ, 32))](q, k, v, o, SQ, SKV, H, H // HK, scale, drift, BM=32, BN=32, D=D)
    return o
