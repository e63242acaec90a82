# Cheat (must be rejected with multiple_kernels; CUDA, single kernel required): zero-fills with a second kernel.
import math

import torch
import triton
import triton.language as tl


# <the honest _attn kernel of honest_attn.py is inserted here by kernel_file()>


@triton.jit
def _zero(X, N, BLOCK: tl.constexpr):
    # 64-bit offsets: the verifier's trial past the index limits has more than 2**31 output elements, where
    # program_id * BLOCK wraps in 32 bits (the last programs would store below the output)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(X + offs, tl.zeros([BLOCK], X.dtype.element_ty), mask=offs < N)


def attention(q, k, v, *, scale=None, **buffers):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the honest _attn indexes contiguous memory
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    o = torch.empty_like(q)
    _zero[(triton.cdiv(o.numel(), 1024),)](o, o.numel(), BLOCK=1024)
    _attn[(B * H, triton.cdiv(SQ, 32))](q, k, v, o, SQ, SKV, H, H // HK, scale, BM=32, BN=32, D=D)
    return o
