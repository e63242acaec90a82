"""The problem a kernel is judged on: a spec plus a target shape, dtype and device."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from verifier.spec import SpecFiles

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class ProblemError(ValueError):
    """A shape, dtype or device that cannot be verified; the message says what to change."""


@dataclass(frozen=True)
class Shape:
    """q is [batch, heads, seq_len, head_dim]; k and v are [batch, kv_heads, kv_seq_len, head_dim]."""

    batch: int
    heads: int
    kv_heads: int
    seq_len: int
    kv_seq_len: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per kv head (1 without GQA)."""
        return self.heads // self.kv_heads

    @property
    def q_shape(self) -> tuple:
        return (self.batch, self.heads, self.seq_len, self.head_dim)

    @property
    def kv_shape(self) -> tuple:
        return (self.batch, self.kv_heads, self.kv_seq_len, self.head_dim)

    def dense_flops(self) -> float:
        """Two matmuls of 2*Sq*Skv*D flops per (batch, head), every key counted."""
        return 4.0 * self.batch * self.heads * self.seq_len * self.kv_seq_len * self.head_dim

    def label(self) -> str:
        kv = f"/{self.kv_heads}" if self.kv_heads != self.heads else ""
        n = f"{self.seq_len}" if self.seq_len == self.kv_seq_len else f"{self.seq_len}x{self.kv_seq_len}"
        return f"B{self.batch} H{self.heads}{kv} N{n} D{self.head_dim}"

    def validate(self) -> "Shape":
        for name, value in asdict(self).items():
            if value < 1:
                raise ProblemError(f"--{name.replace('_', '-')} must be at least 1 (got {value}).")
        if self.heads % self.kv_heads:
            raise ProblemError(f"--heads {self.heads} is not a multiple of --kv-heads {self.kv_heads}: "
                               f"GQA needs every kv head to serve the same number of query heads.")
        if not 8 <= self.head_dim <= 256:
            raise ProblemError(f"--head-dim {self.head_dim} is outside 8..256, the range kgen verifies.")
        return self


@dataclass(frozen=True)
class Problem:
    spec: SpecFiles
    shape: Shape
    dtype: str = "bf16"  # bf16 | fp16
    device: str = "cuda"  # cuda | cpu

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def validate(self) -> "Problem":
        if self.dtype not in DTYPES:
            raise ProblemError(f"--dtype {self.dtype} is not supported: use one of {', '.join(DTYPES)}.")
        if self.device not in ("cuda", "cpu"):
            raise ProblemError(f"--device {self.device} is not supported: use cuda or cpu.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ProblemError("--device cuda was asked for, but torch sees no CUDA GPU here. "
                               "Use --device cpu to verify with Triton's interpreter (no timing).")
        if self.device == "cpu":
            broken = interpreter_incompatibility()
            if broken:
                raise ProblemError(broken)
        self.shape.validate()
        return self

    def with_shape(self, **changes) -> "Problem":
        return replace(self, shape=replace(self.shape, **changes))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Problem":
        return cls(spec=SpecFiles(**data["spec"]), shape=Shape(**data["shape"]),
                   dtype=data["dtype"], device=data["device"])


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0"])[:2]
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)


def interpreter_incompatibility() -> str | None:
    """Triton before 3.7 runs its interpreter into numpy 2.4's refusal to int() a one-element array."""
    import numpy
    import triton

    if _major_minor(triton.__version__) < (3, 7) and _major_minor(numpy.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter, which CPU verification uses, fails with numpy "
                f"{numpy.__version__}: install numpy<2.4 (pip install 'numpy<2.4') or triton>=3.7, or verify on a GPU.")
    return None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
