"""Render the built-in kernel: the lowered spec dropped into a FlashAttention-2 style template."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2

from agent.builtin.lower import LoweredSpec

TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), undefined=jinja2.StrictUndefined,
                               keep_trailing_newline=True)


@dataclass(frozen=True)
class KernelConfig:
    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def label(self) -> str:
        return f"BM{self.block_m} BN{self.block_n} w{self.num_warps} s{self.num_stages}"

    def to_dict(self) -> dict:
        return asdict(self)


def render_kernel(spec_name: str, lowered: LoweredSpec, cfg: KernelConfig) -> str:
    mask = lowered.mask
    return TEMPLATES.get_template("flash.py.j2").render(
        spec_name=spec_name, cfg=cfg, buffers=list(lowered.buffers), helpers=lowered.helpers,
        score=lowered.score, mask=mask, buffer_params=lowered.buffer_params(),
        buffer_args=lowered.buffer_args("buf"),
        mask_uses_b=bool(mask and "b" in mask.depends), mask_uses_h=bool(mask and "h" in mask.depends))
