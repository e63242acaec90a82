"""The trials a candidate must pass: shapes and input distributions derived from the target.

Every trial is data (shape, distribution, seed, scale); its inputs are generated from the seed, so the
candidate's process and the verifier's process build identical tensors without sending them.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, replace

import torch

from verifier.problem import Shape

DISTRIBUTIONS = ("normal", "large", "adversarial")

# Under Triton's interpreter every program instance runs in Python: keep CPU trials small. The batch stays
# whole up to 8 so that per-batch buffers (key lengths, say) are exercised for every batch element.
CPU_MAX_BATCH, CPU_MAX_KV_HEADS, CPU_MAX_LEN = 8, 2, 128


# Memory layouts of q, k and v that the suite tries, in words
LAYOUTS = {
    "contiguous": "contiguous",
    "bshd": "transposed ([B, S, H, D] memory)",  # q.transpose(1, 2) of a model's projection
    # (verifier.child.in_wider_memory): every stride other than the shape gives, and q's, k's and v's all different
    "strided": "as views into wider memory (fused projections, a longer KV cache)",
}


@dataclass(frozen=True)
class Trial:
    id: str
    purpose: str
    shape: Shape
    dist: str = "normal"
    seed: int = 0
    scale: float | None = None  # None: the kernel's default, 1/sqrt(D)
    repeat_of: str | None = None  # the id of an earlier trial with the very same inputs (a determinism check)
    # how q, k and v lie in memory (LAYOUTS): the values are the same in each
    layout: str = "contiguous"
    # the (batch, head) pairs whose output is compared, for a trial too large to move or check whole
    # (verifier.past_limits); empty: every one
    sample: tuple[tuple[int, int], ...] = ()

    def label(self) -> str:
        """'t17 (sampled, B2 H174848 N48x53 D128)': the trial as progress and messages name it."""
        return f"{self.id} ({self.purpose}, {self.shape.label()})"

    def sampled_heads(self) -> tuple[list[int], list[int]]:
        """The sample's batch indices and head indices, as two lists."""
        return [b for b, _ in self.sample], [h for _, h in self.sample]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Trial":
        return cls(**{**data, "shape": Shape(**data["shape"]),
                      "sample": tuple(tuple(pair) for pair in data.get("sample", ()))})


def interpreter_cap(shape: Shape) -> Shape:
    """The largest shape the CPU suite uses for a target: same head_dim and GQA group, small sizes."""
    kv_heads = min(shape.kv_heads, CPU_MAX_KV_HEADS)
    return replace(shape, batch=min(shape.batch, CPU_MAX_BATCH), kv_heads=kv_heads,
                   heads=kv_heads * shape.group, seq_len=min(shape.seq_len, CPU_MAX_LEN),
                   kv_seq_len=min(shape.kv_seq_len, CPU_MAX_LEN))


def fresh_seed() -> int:
    """The seed of one verifier's inputs, new for each (`kgen verify --seed` repeats one). Fixed inputs would let a
    kernel be fitted to them: tuned, or told by its failures, until it is right on those values alone."""
    return secrets.randbelow(1 << 31)


def build_suite(target: Shape, interpreted: bool, past_limits: Trial | None = None, seed: int = 1000) -> list[Trial]:
    """Target shape and distributions first, then ragged lengths, Sq != Skv both ways, explicit scale, layouts,
    then `past_limits` where given (verifier.past_limits); last, the first trial once more with the same inputs,
    which must give the same output. The i-th trial of the plan draws its inputs from `seed + i`."""
    top = interpreter_cap(target) if interpreted else target
    kv_heads = min(top.kv_heads, 2)
    small = replace(top, batch=min(top.batch, 2), kv_heads=kv_heads, heads=kv_heads * top.group)

    def sized(base: Shape, sq: int, skv: int) -> Shape:  # never larger than the target
        return replace(base, seq_len=max(1, min(sq, top.seq_len)), kv_seq_len=max(1, min(skv, top.kv_seq_len)))

    odd = 1000 if not interpreted else 100
    plan = [
        ("target", top, "normal", None),
        ("target, large logits", top, "large", None),
        ("target, adversarial keys", top, "adversarial", None),
        ("one query, one key", sized(small, 1, 1), "normal", None),
        ("decode: one query, many keys", sized(small, 1, odd), "normal", None),
        ("ragged 17", sized(small, 17, 17), "normal", None),
        ("ragged 127", sized(small, 127, 127), "normal", None),
        (f"ragged {odd}", sized(small, odd, odd), "normal", None),
        # at small targets the other length shrinks too, so that Sq != Skv both ways at every target
        ("fewer queries than keys", sized(small, min(97, top.seq_len // 2 + 1), 300), "normal", None),
        ("more queries than keys", sized(small, 300, min(97, top.kv_seq_len // 2 + 1)), "normal", None),
        ("target lengths minus a few", sized(small, top.seq_len - 3, top.kv_seq_len - 5), "normal", None),
        ("explicit scale", sized(small, 130, 190), "normal", 0.3),
        # a negative scale makes the smallest score the row's largest: a kernel's positive-scale shortcut must not
        # be taken for it
        ("negative scale", sized(small, 65, 80), "normal", -0.3),
        (f"ragged {odd}, large logits", sized(small, odd, odd), "large", None),
        ("ragged 127, adversarial keys", sized(small, 127, 127), "adversarial", None),
        # models hand attention transposed views of their projections: a kernel must read the strides it is given
        ("[B, S, H, D] memory (q.transpose(1, 2) of a projection)", sized(small, 130, 190), "normal", None, "bshd"),
        ("views into wider memory (a fused projection, a longer KV cache)", sized(small, 160, 224), "normal", None,
         "strided"),
    ]
    trials, seen = [], set()
    for i, (purpose, shape, dist, scale, *rest) in enumerate(plan):
        layout = rest[0] if rest else "contiguous"  # (only the layout trials name theirs)
        key = (shape, dist, scale, layout)
        if key in seen:
            continue
        seen.add(key)
        trials.append(Trial(id=f"t{len(trials):02d}", purpose=purpose, shape=shape, dist=dist, seed=seed + i,
                            scale=scale, layout=layout))
    if past_limits is not None:
        trials.append(replace(past_limits, id=f"t{len(trials):02d}"))
    first = trials[0]
    trials.append(replace(first, id=f"t{len(trials):02d}", purpose="target again, same inputs", repeat_of=first.id))
    return trials


def make_inputs(trial: Trial, dtype: torch.dtype, device: str | torch.device):
    """q, k, v for a trial; the same seed gives the same tensors in every process on the device."""
    if trial.sample:
        return tuple(_tiled(trial, name, dtype, device) for name in "qkv")
    s = trial.shape
    g = torch.Generator(device=device).manual_seed(trial.seed)

    def randn(*shape):
        return torch.randn(shape, generator=g, device=device, dtype=torch.float32)

    q, k, v = randn(*s.q_shape), randn(*s.kv_shape), randn(*s.kv_shape)
    if trial.dist == "large":
        # logits = q.k / sqrt(D) have a spread of sigma^2: ~100, as real models reach
        q, k = q * 10.0, k * 10.0
    elif trial.dist == "adversarial":
        _plant_far_keys(q, k, v, randn, s)
    return q.to(dtype), k.to(dtype), v.to(dtype)


# A sampled trial's heads are gathered from a few random ones, a prime number of them for each of q, k and v, so
# that the combination (q's, k's, v's) repeats only after 97 * 89 * 83 heads: a kernel that reads another head's
# rows than its own gives another output. Both processes build the same values, the verifier only those it compares.
TILE_HEADS = {"q": 97, "k": 89, "v": 83}


def _tile_index(trial: Trial, name: str, flat_heads: torch.Tensor) -> torch.Tensor:
    """Which of the random heads of `name` the heads numbered `flat_heads` (b * heads + h) are."""
    return (flat_heads * 7919 + trial.seed) % TILE_HEADS[name]


def _gathered(trial: Trial, name: str, flat_heads: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    """The rows of `name` (q, k or v) at the heads numbered `flat_heads` (b * heads + h): [len, S, D]."""
    s = trial.shape
    rows = s.seq_len if name == "q" else s.kv_seq_len
    g = torch.Generator(device=device).manual_seed(trial.seed + "qkv".index(name))
    base = torch.randn((TILE_HEADS[name], rows, s.head_dim), generator=g, device=device, dtype=torch.float32)
    return base.to(dtype)[_tile_index(trial, name, flat_heads)]


def _tiled(trial: Trial, name: str, dtype: torch.dtype, device) -> torch.Tensor:
    """q, k or v of a sampled trial, whole."""
    s = trial.shape
    heads = s.heads if name == "q" else s.kv_heads
    shape = s.q_shape if name == "q" else s.kv_shape
    return _gathered(trial, name, torch.arange(s.batch * heads, device=device), dtype, device).view(shape)


def sampled_inputs(trial: Trial, dtype: torch.dtype, device, heads=None):
    """q, k, v of a sampled trial at some heads only: [n, 1, S, D] each, k and v those each q head reads. `heads`:
    batch and head index vectors of one length n; by default the trial's sample."""
    s = trial.shape
    b, h = (torch.as_tensor(i, device=device) for i in (heads or trial.sampled_heads()))
    flat = {"q": b * s.heads + h, "k": b * s.kv_heads + h // s.group}
    flat["v"] = flat["k"]
    return tuple(_gathered(trial, name, flat[name], dtype, device).unsqueeze(1) for name in "qkv")


def _plant_far_keys(q, k, v, randn, s: Shape) -> None:
    """Every query leans towards a direction u; a few far-apart keys point along u strongly.

    Such keys dominate the softmax, so a kernel that skips keys (because on random data distant keys
    hardly matter) gets these rows badly wrong.
    """
    u = randn(s.batch, s.kv_heads, 1, s.head_dim)
    u = u / u.norm(dim=-1, keepdim=True)
    q.view(s.batch, s.kv_heads, s.group, s.seq_len, s.head_dim).add_(2.0 * u.unsqueeze(2))
    positions = sorted({0, s.kv_seq_len // 2, s.kv_seq_len - 1})
    for rank, j in enumerate(positions):
        gap = 20.0 + 5.0 * rank  # logit advantage over ordinary keys, in natural-log units
        k[:, :, j] = u[:, :, 0] * (gap * math.sqrt(s.head_dim) / 2.0)
        v[:, :, j] = 4.0 * randn(s.batch, s.kv_heads, s.head_dim)


class RotatingInputs:
    """Timing inputs whose memory stays put while their values change between calls.

    Before each timed call the set it uses gets values it has never held before (version 1, 2, ...; version
    0 is what the first calls saw): a kernel that caches on its inputs' pointers or identity then returns
    outputs of older values, which the re-check of the timed outputs catches. `versions()` says which values
    each set holds now, with `seed_of(base_seed, version)`. Values are generated afresh rather than
    stored, so the inputs take no more memory than the sets themselves."""

    VERSION_STRIDE = 7919  # seed offset between one version of a set and the next

    def __init__(self, shape: Shape, dtype: torch.dtype, device: str, seeds: list[int]):
        self.shape, self.dtype, self.device, self.base = shape, dtype, device, list(seeds)
        self.version = [0] * len(seeds)
        self.live = [self._values(i) for i in range(len(seeds))]

    @classmethod
    def seed_of(cls, base_seed: int, version: int) -> int:
        return base_seed + cls.VERSION_STRIDE * version

    def _values(self, i: int):
        seed = self.seed_of(self.base[i], self.version[i])
        return make_inputs(Trial(id=f"s{i}", purpose="timing", shape=self.shape, seed=seed), self.dtype, self.device)

    def refresh(self, i: int) -> None:
        self.version[i] += 1
        for dst, src in zip(self.live[i], self._values(i)):
            dst.copy_(src)

    def versions(self) -> list[int]:
        return list(self.version)
