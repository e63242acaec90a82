"""A GPT-style block whose attention is either FlexAttention with a spec or the kernel `kgen export` wrote.

    kgen export runs/<run> -o my_attention.py
    python examples/gpt_block.py --spec examples/specs/rel_pos.py --kernel my_attention.py

Both blocks get the same weights and input; their outputs must match. On a GPU both run under
torch.compile and are timed. On CPU the kernel runs under Triton's interpreter (slow: use small sizes) and
FlexAttention runs eagerly.

The only change a model needs is the attention call (see `flex_attention_fn` and `kgen_attention_fn`):

    o = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)   # before
    o = attention(q, k, v)                                                    # after: from my_attention
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


@dataclass
class Config:
    batch: int = 4
    seq_len: int = 4096
    heads: int = 16
    head_dim: int = 64

    @property
    def width(self) -> int:
        return self.heads * self.head_dim


class Block(nn.Module):
    """Pre-norm transformer block; `attend(q, k, v)` takes and returns [B, H, S, D]."""

    def __init__(self, cfg: Config, attend):
        super().__init__()
        self.heads, self.attend = cfg.heads, attend
        self.ln1, self.ln2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        self.proj = nn.Linear(cfg.width, cfg.width, bias=False)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, S, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        o = self.attend(q, k, v)
        x = x + self.proj(o.transpose(1, 2).reshape(B, S, C))
        return x + self.mlp(self.ln2(x))


def flex_attention_fn(spec, cfg: Config, device: str):
    """FlexAttention with the spec's score_mod and mask_mod (the block mask is built once)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    score_mod, mask_mod = getattr(spec, "score_mod", None), getattr(spec, "mask_mod", None)
    block_mask = None
    if mask_mod is not None:
        block_mask = create_block_mask(mask_mod, cfg.batch, cfg.heads, cfg.seq_len, cfg.seq_len, device=device)

    def attend(q, k, v):
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)

    return attend


def kgen_attention_fn(module):
    """The exported kernel: a torch custom op, so torch.compile keeps the block in one graph."""
    return module.attention


def load_module(path: Path, device: str | None = None):
    """Import a Python file by path; with `device`, move the tensors it captures there (a spec's buffers)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    if device:
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor):
                setattr(module, name, value.to(device))
    return module


def time_ms(fn, x: torch.Tensor, calls: int = 50) -> float:
    """Median milliseconds per call, the GPU synchronised around each."""
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="the spec file the kernel was searched for")
    parser.add_argument("--kernel", type=Path, required=True, help="the module `kgen export` wrote")
    for name, default in vars(Config()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args(argv)
    cfg = Config(args.batch, args.seq_len, args.heads, args.head_dim)
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float16)  # the interpreter gets bf16 wrong
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernel module is imported

    torch.manual_seed(0)
    flex_block = Block(cfg, flex_attention_fn(load_module(args.spec, device), cfg, device)).to(device, dtype).eval()
    kgen_block = Block(cfg, kgen_attention_fn(load_module(args.kernel))).to(device, dtype).eval()
    kgen_block.load_state_dict(flex_block.state_dict())
    x = torch.randn(cfg.batch, cfg.seq_len, cfg.width, device=device, dtype=dtype)

    blocks = {"flex": flex_block, "kgen": kgen_block}
    if cuda:
        blocks = {name: torch.compile(block) for name, block in blocks.items()}
    else:
        warnings.filterwarnings("ignore", "flex_attention called without torch.compile")  # eager is fine here
    with torch.inference_mode():
        outputs = {}
        for name, block in blocks.items():
            start = time.perf_counter()
            outputs[name] = block(x)
            print(f"{name}: first call{' (compiles)' if cuda else ''} {time.perf_counter() - start:.1f} s")
        error = (outputs["flex"].float() - outputs["kgen"].float()).abs().max().item()
        tolerance = 0.03 * outputs["flex"].float().abs().max().item()  # a few roundings in 16-bit floats
        print(f"max |flex - kgen| = {error:.3g} (tolerance {tolerance:.3g}) on {tuple(x.shape)} {dtype} {device}")
        if not error <= tolerance:
            print("MISMATCH: the kernel's block does not match FlexAttention's")
            return 1
        if cuda:
            for name, block in blocks.items():
                print(f"{name}: {time_ms(block, x):.3f} ms per block (torch.compile, {torch.cuda.get_device_name()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
