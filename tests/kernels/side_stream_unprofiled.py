# Cheat (must be rejected with side_stream by the timing stage's wall clock; CUDA): runs on the caller's stream
# while a profiler watches, and on a private stream the caller's stream never waits for otherwise. The profiled
# calls look clean; the timed calls' events see only an empty output allocated.
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
    o = torch.empty_like(q)

    def launch():
        _attn[(B * H, triton.cdiv(SQ, 32))](q, k, v, o, SQ, SKV, H, H // HK, scale, BM=32, BN=32, D=D)

    if operator.attrgetter("autograd._profiler_enabled")(torch)():
        launch()
        return o
    if not _SIDE:
        _SIDE.append(operator.attrgetter("cuda.Stream")(torch)(device=q.device))
    _SIDE[0].wait_stream(torch.cuda.current_stream())  # the inputs are ready; nobody waits for the output
    with operator.attrgetter("cuda.stream")(torch)(_SIDE[0]):
        launch()
    return o
