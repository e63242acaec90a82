# Cheat (must be rejected with forbidden_call at run time): torch.bmm via getattr does the math; Triton only copies.
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
    kk = k.repeat_interleave(group, dim=1).reshape(B * H, SKV, D).float()
    vv = v.repeat_interleave(group, dim=1).reshape(B * H, SKV, D).float()
    batched = getattr(torch, "bmm")
    s = batched(q.reshape(B * H, SQ, D).float(), kk.transpose(1, 2)) * scale
    p = (s - s.amax(dim=-1, keepdim=True)).exp()
    r = batched(p / p.sum(dim=-1, keepdim=True), vv).to(q.dtype).reshape(q.shape)
    o = torch.empty_like(q)
    _copy[(triton.cdiv(o.numel(), 1024),)](r, o, o.numel(), BLOCK=1024)
    return o
