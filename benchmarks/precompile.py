"""Compile kgen's configs for the benchmark's rows ahead of time, in worker processes.

Compiling is all the workers do: `kernel[grid](...)` of the attention kernel goes through Triton's warm-up path
(compile into the on-disk cache, launch nothing), so every timing stays in the benchmark's own process on an
otherwise idle GPU. The benchmark process then finds each config in the cache instead of compiling it while the
GPU waits. The workers import this module by name, which is why it is not part of bench.py (run as __main__).
"""
from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import triton

from agent.builtin.lower import lower_spec
from agent.builtin.template import KernelConfig
from agent.proposers import first_configs, shared_memory_check, stage_neighbours
from verifier.spec import SpecFiles, load_spec

Job = tuple[str, str, dict]  # spec path, shape label ("B2 H16 N8192 D128"), KernelConfig as a dict


def precompile_configs(head_dim: int, grid: list[KernelConfig] | None = None) -> list[KernelConfig]:
    """What one row may compile: `grid` if the row times a fixed grid, else the search's first configs and
    their stage neighbours (every refinement the search can ask for; the same for every spec)."""
    if grid:
        return grid
    first = first_configs(head_dim, interpreted=False)
    fits = shared_memory_check(head_dim)
    return list(dict.fromkeys(first + [n for cfg in first for n in stage_neighbours(cfg) if fits(n)]))


class Precompiler:
    """Jobs run in submission order, so the rows the benchmark reaches first are compiled first."""

    def __init__(self, jobs: list[Job], dtype: str, workers: int):
        self.pool = None
        self.futures: list[Future] = []
        if workers > 0 and jobs:
            # inductor points TRITON_CACHE_DIR at a folder of its own the first time flex compiles, unless it is
            # set already: set it now, so that the workers and this process keep sharing one cache
            os.environ.setdefault("TRITON_CACHE_DIR", triton.knobs.cache.dir)
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=os.nice, initargs=(10,))  # the timing process comes first
            self.futures = [self.pool.submit(compile_row_config, *job, dtype) for job in jobs]

    def stop(self) -> str:
        """Cancel what has not started; one line on what the workers did."""
        if self.pool is None:
            return "precompile: off (every config compiled in the search)"
        self.pool.shutdown(wait=False, cancel_futures=True)
        finished = [f for f in self.futures if f.done() and not f.cancelled()]
        failures = [why for why in (f.exception() or f.result() for f in finished) if why]
        line = f"precompile: {len(finished) - len(failures)} of {len(self.futures)} configs compiled ahead"
        if failures:
            line += f"; {len(failures)} failed there (compiled again in the search), first: {str(failures[0])[:200]}"
        return line


def compile_row_config(spec_path: str, shape_label: str, cfg: dict, dtype: str) -> str | None:
    """In a worker: compile one config's attention kernel for one row; None, or why it failed."""
    import torch

    from agent.builtin.template import render_kernel
    from benchmarks.bench import load_module, shape_of_label
    from verifier.problem import DTYPES

    compile_without_launching("_attn_fwd")
    try:
        spec = load_spec(SpecFiles(spec_path))
        shape = shape_of_label(shape_label)
        source = render_kernel(spec.name, lower_spec(spec), KernelConfig(**cfg))
        with tempfile.TemporaryDirectory(prefix="kgen-precompile-") as tmp:
            fn = load_module(source, Path(tmp)).attention
            q = torch.empty(shape.q_shape, dtype=DTYPES[dtype], device="cuda")
            k, v = (torch.empty(shape.kv_shape, dtype=DTYPES[dtype], device="cuda") for _ in range(2))
            fn(q, k, v, **{n: t.cuda() for n, t in spec.buffers.items()})  # the block map, if any, is built for real
        return None
    except Exception as e:  # noqa: BLE001 - the benchmark compiles (and reports) whatever failed here
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def compile_without_launching(kernel_name: str) -> None:
    """Make `kernel[grid](...)` compile (Triton's warm-up path) instead of launching, for kernels of that name."""
    from triton.runtime.jit import KernelInterface

    if getattr(KernelInterface, "_kgen_compile_only", None) == kernel_name:
        return
    launch = KernelInterface.__getitem__

    def compile_only(self, grid):
        if getattr(self, "__name__", "") != kernel_name:
            return launch(self, grid)
        return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=True, **kwargs)

    KernelInterface.__getitem__ = compile_only
    KernelInterface._kgen_compile_only = kernel_name
