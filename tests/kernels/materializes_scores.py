# Cheat (must be rejected with materialized_scores): allocates a [B, H, Sq, Skv] float32 score matrix per call.
import math

import torch
import triton
import triton.language as tl


# <the honest _attn kernel of honest_attn.py is inserted here by kernel_file()>


@triton.jit
def _fill(X, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(X + offs, tl.zeros([BLOCK], tl.float32), mask=offs < N)


def attention(q, k, v, *, scale=None, **buffers):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the honest _attn indexes contiguous memory
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = torch.empty(B, H, SQ, SKV, dtype=torch.float32, device=q.device)  # "for debugging"
    _fill[(triton.cdiv(scores.numel(), 1024),)](scores, scores.numel(), BLOCK=1024)
    o = torch.empty_like(q)
    _attn[(B * H, triton.cdiv(SQ, 32))](q, k, v, o, SQ, SKV, H, H // HK, scale, BM=32, BN=32, D=D)
    return o
