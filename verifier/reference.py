"""The exact reference, and the straightforward low-precision computation that sets the tolerance.

Both apply score_mod / mask_mod by broadcasting index tensors, chunked over queries so memory stays
bounded: never a [B, H, Sq, Skv] score tensor at once.
"""
from __future__ import annotations

import math

import torch

from verifier import gpu_memory
from verifier.spec import Spec, index_grid

CHUNK_BYTES = {"cuda": 1 << 29, "cpu": 1 << 27}  # score bytes per chunk; temporaries take a few more


def exact(q, k, v, spec: Spec, scale: float | None, shape, heads=None) -> torch.Tensor:
    """float64 attention: the truth a candidate is compared against. With `heads` (batch and head index vectors,
    verifier.suite.sampled_inputs), q, k and v are [n, 1, S, D]: those heads of `shape`, k and v the ones each
    reads."""
    return _attend(q, k, v, spec, scale, shape, torch.float64, round_p_to=None, heads=heads)


def straightforward(q, k, v, spec: Spec, scale: float | None, shape, heads=None) -> torch.Tensor:
    """What a careful kernel computes in the input dtype: fp32 scores and softmax, P rounded to the
    input dtype before P@V, output rounded. Its error against `exact` is the error the dtype forces."""
    o = _attend(q, k, v, spec, scale, shape, torch.float32, round_p_to=q.dtype, heads=heads)
    return o.to(q.dtype)


def _attend(q, k, v, spec: Spec, scale, shape, compute: torch.dtype, round_p_to, heads=None) -> torch.Tensor:
    scale = 1.0 / math.sqrt(shape.head_dim) if scale is None else scale
    device = q.device
    group = shape.group if heads is None else 1  # sampled heads come with their own k and v
    k = k.to(compute).repeat_interleave(group, dim=1)
    v = v.to(compute).repeat_interleave(group, dim=1)
    out = torch.empty(q.shape, dtype=compute, device=device)
    buffers = {n: t.to(device) for n, t in spec.buffers.items()}
    rows = _chunk_rows(q.shape[0] * q.shape[1], shape.kv_seq_len, compute, device.type)
    with torch.no_grad(), buffers_on(spec, buffers):
        for start, stop, o in in_shrinking_chunks(
                shape.seq_len, rows, lambda a, b: _attend_rows(q, k, v, spec, scale, shape, a, b, round_p_to, heads)):
            out[:, :, start:stop] = o
    return out


def in_shrinking_chunks(total: int, size: int, work):
    """(start, stop, work(start, stop)) over 0..total, `size` at a time. A chunk that runs out of GPU memory
    (torch's allocator, or cuBLAS's workspace: `gpu_memory.out_of_memory`) is tried again at a quarter of its size,
    down to one: where other processes hold the GPU's memory (test processes sharing one GPU, a training job beside
    kgen), smaller chunks give the same answer. Any other error raises at once."""
    start = 0
    while start < total:
        stop = min(start + size, total)
        failed = False
        try:
            result = work(start, stop)
        except Exception as exc:
            if not gpu_memory.out_of_memory(exc) or stop - start == 1:
                raise
            failed = True
        if failed:  # (out of the handler, whose traceback holds the failed chunk's tensors)
            size = max(1, (stop - start) // 4)
            torch.cuda.empty_cache()
            continue
        yield start, stop, result
        start = stop


def _attend_rows(q, k, v, spec: Spec, scale: float, shape, start: int, stop: int, round_p_to, heads) -> torch.Tensor:
    """Query rows start..stop-1 of attention in k's dtype (the compute dtype)."""
    compute = k.dtype
    q_rows = torch.arange(start, stop, device=q.device)
    s = torch.matmul(q[:, :, start:stop].to(compute), k.transpose(-1, -2)) * scale
    s = scores_after_mods(s, spec, shape, q_rows, heads)
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows with every key masked
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    if round_p_to is not None:
        p = p.to(round_p_to).to(compute)
    o = torch.matmul(p, v)
    return torch.where(l > 0, o / l.clamp_min(torch.finfo(compute).tiny), 0.0)


def scores_after_mods(s: torch.Tensor, spec: Spec, shape, q_rows: torch.Tensor, heads=None) -> torch.Tensor:
    """score_mod, then mask_mod (masked = -inf), for a chunk of query rows (of the heads given, or all)."""
    b, h, qi, kv = index_grid(shape, q_rows, s.device, heads=heads)
    if spec.score_mod is not None:
        s = torch.broadcast_to(spec.score_mod(s, b, h, qi, kv), s.shape).to(s.dtype)
    if spec.mask_mod is not None:
        keep = torch.broadcast_to(spec.mask_mod(b, h, qi, kv), s.shape)
        s = s.masked_fill(~keep, float("-inf"))
    return s


def mask_density(spec: Spec, shape, device: str = "cpu") -> float:
    """Fraction of (b, h, q, kv) that mask_mod keeps: the share of dense work that is real work."""
    if spec.mask_mod is None:
        return 1.0
    kept = 0
    rows = _chunk_rows(shape.batch * shape.heads, shape.kv_seq_len, torch.bool, device)
    with torch.no_grad(), buffers_on(spec, {n: t.to(device) for n, t in spec.buffers.items()}):
        for start in range(0, shape.seq_len, rows):
            q_rows = torch.arange(start, min(start + rows, shape.seq_len), device=device)
            b, h, qi, kv = index_grid(shape, q_rows, device)
            keep = torch.broadcast_to(spec.mask_mod(b, h, qi, kv), (shape.batch, shape.heads, len(q_rows),
                                                                    shape.kv_seq_len))
            kept += int(keep.sum())
    return kept / (shape.batch * shape.heads * shape.seq_len * shape.kv_seq_len)


def _chunk_rows(heads: int, kv_seq_len: int, dtype: torch.dtype, device_type: str) -> int:
    """Query rows a chunk: the scores of every head for that many rows fit CHUNK_BYTES."""
    per_row = heads * kv_seq_len * torch.empty((), dtype=dtype).element_size()
    return max(1, CHUNK_BYTES[device_type] // per_row)


class buffers_on:
    """Point the spec's captured tensors at copies on the compute device while evaluating it."""

    def __init__(self, spec: Spec, moved: dict):
        self.spec, self.moved, self.saved = spec, moved, []

    def __enter__(self):
        for fn in (self.spec.score_mod, self.spec.mask_mod):
            if fn is None:
                continue
            for name, tensor in self.moved.items():
                if fn.__globals__.get(name) is self.spec.buffers[name]:
                    self.saved.append((fn.__globals__, name, self.spec.buffers[name]))
                    fn.__globals__[name] = tensor
        return self

    def __exit__(self, *exc):
        for glb, name, tensor in self.saved:
            glb[name] = tensor
        return False
