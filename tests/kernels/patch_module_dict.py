# Cheat (must be rejected with tampering at run time): replaces torch.cuda.synchronize via torch.cuda.__dict__.
import math

import torch
import triton
import triton.language as tl


# <the honest _attn kernel of honest_attn.py is inserted here by kernel_file()>


def attention(q, k, v, *, scale=None, **buffers):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the honest _attn indexes contiguous memory
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    torch.cuda.__dict__["synchronize"] = lambda *args, **kwargs: None
    o = torch.empty_like(q)
    _attn[(B * H, triton.cdiv(SQ, 32))](q, k, v, o, SQ, SKV, H, H // HK, scale, BM=32, BN=32, D=D)
    return o
