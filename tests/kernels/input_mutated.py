# Cheat (must be rejected with input_mutated): pre-scales q in place, then runs attention with scale 1.
import math

import torch
import triton
import triton.language as tl


# <the honest _attn kernel of honest_attn.py is inserted here by kernel_file()>


@triton.jit
def _scale_(X, N, factor, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < N)
    tl.store(X + offs, (x * factor).to(X.dtype.element_ty), mask=offs < N)


def attention(q, k, v, *, scale=None, **buffers):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the honest _attn indexes contiguous memory
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    _scale_[(triton.cdiv(q.numel(), 1024),)](q, q.numel(), scale, BLOCK=1024)  # saves a multiply per score
    o = torch.empty_like(q)
    _attn[(B * H, triton.cdiv(SQ, 32))](q, k, v, o, SQ, SKV, H, H // HK, 1.0, BM=32, BN=32, D=D)
    return o
