"""The trial past the hardware's index limits, which no target-sized trial reaches.

A kernel launched on a grid whose second or third axis counts batch x heads fails past 65535 of them (decode
batches reach that: 512 sequences x 128 heads), and one that computes element offsets in 32 bits goes wrong past
2**31 elements (a long KV cache reaches that: 8 x 32 heads x 65536 positions x 128). Both pass every trial at
the target shape. This trial has short rows and more heads than either limit, with q's, k's and v's elements all
past 2**31. Moving and checking 4 GB of output per candidate would cost more than the rest of the suite, so its
output is compared element by element at the heads either side of each limit and some others, and at every row
through one random projection (verifier.every_row).
"""
from __future__ import annotations

import random
from typing import Callable

from verifier.problem import Shape
from verifier.suite import Trial

GRID_AXIS_LIMIT = 65535  # a CUDA grid's y and z axes
INT32_ELEMENTS = 2 ** 31  # past this, a 32-bit element offset wraps
ROWS = 48  # query rows a head: short (so that heads are many) and a ragged tile at every block size
SAMPLED_HEADS = 40
# what the candidate's process holds at once, in multiples of its inputs and output: the inputs made, their
# guarded copies, the output, and the check for output elements never written
MEMORY_FACTOR = 2.5


def past_limits_shape(target: Shape, covers: Callable[[Shape], bool]) -> Shape | None:
    """The target's head dim and GQA group, more heads (or, where the spec's buffers index heads, batches) than
    either limit; None if the spec's buffers cover neither."""
    kv_rows = target.group * ROWS + 5  # then k and v, with group times fewer heads, pass 2**31 elements too
    units = -(-(INT32_ELEMENTS + (1 << 20)) // (ROWS * target.head_dim))  # batch x heads for q past 2**31
    batch = min(target.batch, 2)
    heads = _round_up(-(-units // batch), target.group)
    many_heads = Shape(batch=batch, heads=heads, kv_heads=heads // target.group, seq_len=ROWS, kv_seq_len=kv_rows,
                       head_dim=target.head_dim)
    many_batches = Shape(batch=-(-units // target.heads), heads=target.heads, kv_heads=target.kv_heads,
                         seq_len=ROWS, kv_seq_len=kv_rows, head_dim=target.head_dim)
    return next((s for s in (many_heads, many_batches) if covers(s)), None)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def sample_heads(shape: Shape, seed: int) -> tuple[tuple[int, int], ...]:
    """(batch, head) pairs: the first and last, those either side of 65535 batch-heads and of each tensor's 2**31st
    element, and random others."""
    total = shape.batch * shape.heads
    flat = {0, 1, total - 2, total - 1, GRID_AXIS_LIMIT - 1, GRID_AXIS_LIMIT, GRID_AXIS_LIMIT + 1}
    q_wrap = INT32_ELEMENTS // (shape.seq_len * shape.head_dim)  # the first q head with an element past 2**31
    kv_wrap = INT32_ELEMENTS // (shape.kv_seq_len * shape.head_dim)  # same for k and v
    flat |= {q_wrap - 1, q_wrap, q_wrap + 1, kv_wrap * shape.group - 1, kv_wrap * shape.group,
             (kv_wrap + 1) * shape.group}
    flat |= {shape.heads, shape.heads - 1}  # the second batch's first head, the first batch's last
    rng = random.Random(seed)
    while len(flat) < SAMPLED_HEADS:
        flat.add(rng.randrange(total))
    return tuple(divmod(f, shape.heads) for f in sorted(f for f in flat if 0 <= f < total))


def input_bytes(shape: Shape, element_size: int = 2) -> int:
    """q, k, v and the output."""
    q = shape.batch * shape.heads * shape.seq_len * shape.head_dim
    kv = shape.batch * shape.kv_heads * shape.kv_seq_len * shape.head_dim
    return (2 * q + 2 * kv) * element_size


def past_limits_trial(target: Shape, covers: Callable[[Shape], bool], free_bytes: int,
                      seed: int = 4242) -> tuple[Trial | None, str]:
    """The trial (its id is set by the suite) and a note for the report, or None and why it is left out. `seed`
    draws its inputs, its sampled heads and its projection's direction."""
    shape = past_limits_shape(target, covers)
    if shape is None:
        return None, ("not tried past 65535 batch x heads and 2**31 elements: the spec's captured buffers cover "
                      f"neither that many heads nor that many batches (nor, if they index positions, {ROWS} queries "
                      "and the keys that trial has)")
    need = int(input_bytes(shape) * MEMORY_FACTOR)
    if free_bytes < need:
        return None, (f"not tried past 65535 batch x heads and 2**31 elements ({shape.label()}): it needs about "
                      f"{need / 2**30:.0f} GiB of GPU memory and {free_bytes / 2**30:.0f} GiB are free")
    trial = Trial(id="", purpose="past the index limits: more than 65535 batch x heads, more than 2**31 elements "
                                 "in q, k and v", shape=shape, seed=seed, sample=sample_heads(shape, seed))
    note = (f"the suite has a trial past the index limits, {shape.label()} (more than 65535 batch x heads, more "
            f"than 2**31 elements in q, k and v), its output compared at {len(trial.sample)} heads and at every row "
            "through a random projection")
    return trial, note
