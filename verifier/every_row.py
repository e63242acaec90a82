"""A sampled trial's output at every row, seen through one random direction.

The trial past the index limits has a 4 GB output; the verifier compares 40 heads of it element by element
(verifier.past_limits). So that no head goes unseen, the candidate's process also projects every output row onto a
random +-1 vector over head_dim ([B, H, Sq] float32, 1/64 of the output's bytes at D128), and the verifier compares
that with the same projection of the reference, built head chunk by head chunk. A wrong row moves its projection by
about sqrt(D) times its error, however few heads are wrong and wherever they are; a kernel cannot pass it by getting
the sampled heads right, nor without computing every row.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from verifier import reference
from verifier.spec import Spec
from verifier.suite import Trial, sampled_inputs

CHUNK_HEADS = 8192  # heads projected, fingerprinted or referenced at once: 100-400 MB of temporaries at 48 rows, D128


def direction(trial: Trial, head_dim: int, device) -> torch.Tensor:
    """The +-1 vector both processes project onto, float32 (drawn on the CPU: the same in every process)."""
    g = torch.Generator().manual_seed(trial.seed + 101)
    signs = torch.randint(0, 2, (head_dim,), generator=g) * 2 - 1
    return signs.to(device=device, dtype=torch.float32)


def head_chunks(t: torch.Tensor) -> Iterator[tuple[int, slice]]:
    """(b, heads) over a [B, H, ...] tensor, CHUNK_HEADS heads of one batch element at a time: what a pass over a
    past-limits tensor may widen or copy at once, whatever its strides."""
    for b in range(t.shape[0]):
        for start in range(0, t.shape[1], CHUNK_HEADS):
            yield b, slice(start, start + CHUNK_HEADS)


def project(out: torch.Tensor, trial: Trial) -> torch.Tensor:
    """Each row of the output [B, H, Sq, D] dotted with the direction: [B, H, Sq] float32, on out's device. Any
    strides: a chunk of heads at a time, never a float copy of the whole output."""
    w = direction(trial, out.shape[-1], out.device)
    rows = torch.empty(out.shape[:-1], dtype=torch.float32, device=out.device)
    for b, heads in head_chunks(out):
        rows[b, heads] = out[b, heads].float() @ w
    return rows


def reference_rows(trial: Trial, spec: Spec, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection of the exact output (float64) and of the straightforward one in `dtype` (which sets the
    tolerance, verifier.numerics), each [B, H, Sq, 1]: every head of the trial, built a chunk at a time."""
    s = trial.shape
    w = direction(trial, s.head_dim, device).double()

    def rows_of(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:  # heads start..stop-1, flattened
        flat = torch.arange(start, stop, device=device)
        heads = (flat // s.heads, flat % s.heads)
        q, k, v = sampled_inputs(trial, dtype, device, heads)
        return (reference.exact(q, k, v, spec, trial.scale, s, heads)[:, 0] @ w,
                reference.straightforward(q, k, v, spec, trial.scale, s, heads)[:, 0].double() @ w)

    # Both made whole first and filled a chunk at a time: joining the chunks at the end held every chunk and the
    # joined copy at once (out of memory on an H100 that three other test processes filled). On a GPU others fill,
    # even a chunk's float64 k and v may not fit: fewer heads at a time then.
    exact, plain = (torch.empty(s.batch * s.heads, s.seq_len, dtype=torch.float64, device=device) for _ in range(2))
    for start, stop, (e, p) in reference.in_shrinking_chunks(s.batch * s.heads, CHUNK_HEADS, rows_of):
        exact[start:stop], plain[start:stop] = e, p
    grid = (s.batch, s.heads, s.seq_len, 1)
    return exact.view(grid), plain.view(grid)
