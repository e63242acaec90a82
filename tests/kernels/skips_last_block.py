# Cheat (must be rejected with uninitialized_output): never launches the last query block; its rows stay unwritten.
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
    o = torch.empty_like(q)
    blocks = max(triton.cdiv(SQ, 32) - 1, 1)  # "the last block is mostly padding anyway"
    _attn[(B * H, blocks)](q, k, v, o, SQ, SKV, H, H // HK, scale, BM=32, BN=32, D=D)
    return o
