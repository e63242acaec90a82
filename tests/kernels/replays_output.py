# Cheat (must be rejected with output_aliases_input; CUDA): returns its old output object, launching nothing, for reused inputs.
import math

import torch
import triton
import triton.language as tl


# <the honest _attn kernel of honest_attn.py is inserted here by kernel_file()>


_SEEN = {}  # holding the inputs keeps their memory, and so the key, from being reused


def attention(q, k, v, *, scale=None, **buffers):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the honest _attn indexes contiguous memory
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    key = (q.data_ptr(), k.data_ptr(), v.data_ptr(), scale)
    seen = _SEEN.get(key)
    if seen is not None and seen[0] is q and seen[1] is k and seen[2] is v:
        return seen[3]
    o = torch.empty_like(q)
    _attn[(B * H, triton.cdiv(SQ, 32))](q, k, v, o, SQ, SKV, H, H // HK, scale, BM=32, BN=32, D=D)
    _SEEN[key] = (q, k, v, o)
    return o
