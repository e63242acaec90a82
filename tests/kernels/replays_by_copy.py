# Cheat (must be rejected with cached_output; CUDA): for reused input tensors, copies its remembered output into a fresh one.
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _attn(Q, K, V, O, SQ, SKV, H, GROUP, sm_scale, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
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
    out = (acc / l_i[:, None]).to(O.dtype.element_ty)
    tl.store(O + bh * SQ * D + rows[:, None] * D + dims[None, :], out, mask=rows[:, None] < SQ)


@triton.jit
def _copy(SRC, DST, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(DST + offs, tl.load(SRC + offs, mask=offs < N), mask=offs < N)


_SEEN = {}  # holding the inputs keeps their memory, and so the key, from being reused


def attention(q, k, v, *, scale=None, **buffers):
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    key = (q.data_ptr(), k.data_ptr(), v.data_ptr(), scale)
    seen = _SEEN.get(key)
    if seen is not None and seen[0] is q and seen[1] is k and seen[2] is v:
        fresh = torch.empty_like(q)
        _copy[(triton.cdiv(q.numel(), 1024),)](seen[3], fresh, q.numel(), BLOCK=1024)
        return fresh
    o = torch.empty_like(q)
    _attn[(triton.cdiv(SQ, 32), B * H)](q, k, v, o, SQ, SKV, H, H // HK, scale, BM=32, BN=32, D=D)
    _SEEN[key] = (q, k, v, o)
    return o
