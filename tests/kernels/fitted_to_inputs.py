# Cheat (must be rejected with wrong_output when the verifier's seed is fresh): fitted to the inputs it was shown.
# Right on the values a fixed suite draws, wrong on any others: a kernel reworked until its failures stopped, or one
# told the inputs outright, whose path for unseen values was never checked. It recognises its inputs by their first
# query values (SEEN, filled in by the test from the suite of one seed).
import math

import torch
import triton
import triton.language as tl


# <the honest _attn kernel of honest_attn.py is inserted here by kernel_file()>


SEEN = set()  # <the first query values of every trial the kernel was fitted on>


def attention(q, k, v, *, scale=None, **buffers):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the honest _attn indexes contiguous memory
    B, H, SQ, D = q.shape
    HK, SKV = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    first = q[0, 0, 0, :4]
    if not any(torch.equal(first, torch.tensor(seen, dtype=q.dtype, device=q.device)) for seen in SEEN):
        scale = scale * 0.9  # the untested path
    o = torch.empty_like(q)
    _attn[(B * H, triton.cdiv(SQ, 32))](q, k, v, o, SQ, SKV, H, H // HK, scale, BM=32, BN=32, D=D)
    return o
