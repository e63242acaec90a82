"""Render the built-in kernel: the lowered spec dropped into a FlashAttention-2 style template."""
from __future__ import annotations

import re
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
    tma: bool = False  # Hopper tensor descriptors for Q, K, V and O (bounds handled by the copy engine)
    warp_specialize: bool = False  # producer/consumer warps for the key loop (with tma)
    # the Gluon kernel (Hopper): a loader warpgroup and two consumer warpgroups of block_m / 2 rows (three of 64
    # at block_m 192); num_warps is per warpgroup
    gluon: bool = False
    # Gluon only: one program per SM, each looping over query tiles (the next tile's loads overlap this one's end)
    persistent: bool = False

    @property
    def fewest_stages(self) -> int:
        """The Gluon kernel issues the next block's QK^T while this block's K and V are still in use: with one
        stage the loader would wait forever for the stage the consumers hold."""
        return 2 if self.gluon else 1

    def label(self) -> str:
        extras = (" tma" * self.tma + " ws" * self.warp_specialize + " gluon" * self.gluon
                  + " persistent" * self.persistent)
        return f"BM{self.block_m} BN{self.block_n} w{self.num_warps} s{self.num_stages}{extras}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_label(cls, label: str) -> "KernelConfig":
        """The config of a label such as "BM64 BN128 w4 s2 tma" (what label() writes)."""
        found = re.fullmatch(r"BM(\d+) BN(\d+) w(\d+) s(\d+)((?: tma| ws| gluon| persistent)*)", label.strip())
        if not found:
            raise ValueError(f"not a config label: {label!r} (expected e.g. 'BM64 BN128 w4 s2 tma')")
        bm, bn, warps, stages = (int(x) for x in found.groups()[:4])
        return cls(bm, bn, warps, stages, tma=" tma" in found.group(5), warp_specialize=" ws" in found.group(5),
                   gluon=" gluon" in found.group(5), persistent=" persistent" in found.group(5))


def render_kernel(spec_name: str, lowered: LoweredSpec, cfg: KernelConfig) -> str:
    mask = lowered.mask
    used = " ".join(f.source for f in (lowered.score, lowered.mask) if f)
    if cfg.persistent and not cfg.gluon:
        raise ValueError("only the Gluon kernel has a persistent form")
    if cfg.num_stages < cfg.fewest_stages:
        raise ValueError("the Gluon kernel needs two stages or more: it loads the next key block while this one's "
                         "K and V are still in use")
    # the kernel runs each residue class of a dilated mask as a problem of its own, on views that fold batch and
    # head into one dimension and make the class the head: its block map is per class, and per view batch wherever
    # the mask reads the batch or the head
    residues = mask.residues if mask else 1
    key_class = mask.key_class if mask else (1, 0)
    # the Gluon kernel's consumer warpgroups: two of BLOCK_M / 2 query rows, or three of 64 for 192-row tiles
    # (FlashAttention-4's sm_90 tile at D <= 64), which only a spec without a mask_mod can have: the block map's
    # query blocks are powers of two
    consumers = 3 if cfg.block_m == 192 else 2
    if cfg.gluon and consumers == 3 and mask:
        raise ValueError("the Gluon kernel takes 192-row query tiles only for a spec without a mask_mod")
    uses_b, uses_h = bool(mask and "b" in mask.depends), bool(mask and "h" in mask.depends)
    return TEMPLATES.get_template("gluon.py.j2" if cfg.gluon else "flash.py.j2").render(
        spec_name=spec_name, cfg=cfg, buffers=list(lowered.buffers), helpers=_used_helpers(lowered.helpers, used),
        score=lowered.score, mask=mask, linear_bias=_adds_bias_by_block(lowered, cfg),
        buffer_params=lowered.buffer_params(),
        buffer_args=lowered.buffer_args("buf"), loop_options=", warp_specialize=True" if cfg.warp_specialize else "",
        residues=residues, key_class=key_class, consumers=consumers, index_params=", H0, P" if residues > 1 else "",
        kv_params=", G0" if residues > 1 and cfg.tma else "",
        mask_uses_b=uses_b or (residues > 1 and uses_h), mask_uses_h=uses_h or residues > 1)


def _adds_bias_by_block(lowered: LoweredSpec, cfg: KernelConfig) -> bool:
    """Whether the kernel adds a linear score_mod bias as a row and a column vector per key block (one
    multiply-add a score) rather than evaluating score_mod on every score. At 64-key blocks only: the compiler
    keeps the column vector in registers across the key loop, which wider blocks pay for. On an H200 (A/B,
    benchmarks/results/h200-2026-12-03-ab-linear-bias.json) the Gluon kernel's 64-key blocks ran ALiBi and
    rel_pos at D=128 5-12% faster, while Triton's 128-key blocks at D=64 ran them 13-20% slower (and ptxas
    spilled inside the Gluon kernel's key loop at 128-key blocks)."""
    return bool(lowered.score and lowered.score.linear_bias and cfg.block_n <= 64)


def _used_helpers(helpers: str, code: str) -> str:
    """Only the helper functions the lowered spec calls, so the kernel file carries no dead code."""
    blocks = re.split(r"\n(?=\n@triton\.jit)", helpers)
    kept = [b for b in blocks if (m := re.search(r"def (\w+)\(", b)) and f"{m.group(1)}(" in code]
    return "\n".join(kept)
