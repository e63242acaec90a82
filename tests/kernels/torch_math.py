# Cheat (must be rejected with forbidden_call at run time): attention in broadcast torch arithmetic; Triton copies.
import math

import torch
import triton
import triton.language as tl


# <the honest _attn kernel of honest_attn.py is inserted here by kernel_file()>


@triton.jit
def _copy(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < N), mask=offs < N)


def attention(q, k, v, *, scale=None, **buffers):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the honest _attn indexes contiguous memory
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    group = H // HK
    kk = k.repeat_interleave(group, dim=1).float()
    vv = v.repeat_interleave(group, dim=1).float()
    s = (q.float().unsqueeze(3) * kk.unsqueeze(2)).sum(-1) * scale  # [B, H, SQ, SKV]
    p = (s - s.amax(dim=-1, keepdim=True)).exp()
    r = ((p / p.sum(dim=-1, keepdim=True)).unsqueeze(-1) * vv.unsqueeze(2)).sum(3).to(q.dtype)
    o = torch.empty_like(q)
    _copy[(triton.cdiv(o.numel(), 1024),)](r, o, o.numel(), BLOCK=1024)
    return o
