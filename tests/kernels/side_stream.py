# Cheat (must be rejected with side_stream; CUDA): launches on a private stream the caller's stream never waits for.
import math
import operator

import torch
import triton
import triton.language as tl


# <the honest _attn kernel of honest_attn.py is inserted here by kernel_file()>


_SIDE = []


def attention(q, k, v, *, scale=None, **buffers):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the honest _attn indexes contiguous memory
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if not _SIDE:
        _SIDE.append(operator.attrgetter("cuda.Stream")(torch)(device=q.device))
    side = _SIDE[0]
    side.wait_stream(torch.cuda.current_stream())  # the inputs are ready; nobody waits for the output
    o = torch.empty_like(q)
    with operator.attrgetter("cuda.stream")(torch)(side):
        _attn[(B * H, triton.cdiv(SQ, 32))](q, k, v, o, SQ, SKV, H, H // HK, scale, BM=32, BN=32, D=D)
    return o
