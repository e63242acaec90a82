"""What the compiler made of a candidate's kernels: registers, spills, shared memory, and what ptxas warned about.

A kernel can pass every check and still be slow for a reason no timing explains: registers spilled to local
memory, or wgmma instructions that ptxas serialized (each one waited for before the next is issued). Triton keeps
the first two on each compiled kernel and drops the third, so ptxas is asked again, on the PTX Triton kept. Where
a spill sits matters as much as its size: one reload per query tile costs nothing, one in the matmul loop costs
every trip, so the machine code (cuobjdump's listing of the cubin) is read for spills inside the matmul loop.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from verifier.sass import spills_in_matmul_loops

# kernels ptxas and cuobjdump are run again for (about a second each); a candidate may compile many variants
ASKED_AT_MOST = 8


def ptxas_performance_warnings(ptx: str) -> list[str]:
    """ptxas's "Potential Performance Loss" messages for this PTX (C7511/C7512: wgmmas serialized), which Triton
    compiles past without passing on. Empty when there are none, and when no ptxas can be run."""
    ptxas = _triton_tool("ptxas")
    target = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE)
    if ptxas is None or target is None:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        try:
            run = subprocess.run([str(ptxas), f"-arch={target.group(1)}", "-v", str(source), "-o",
                                  str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return []
    return [line.split("ptxas info    :", 1)[-1].strip() for line in (run.stdout + run.stderr).splitlines()
            if "Performance Loss" in line]


def wgmma_serialized(warnings: list[str]) -> bool:
    """Whether ptxas's warnings say it serialized the wgmmas (C7511/C7512)."""
    return any("serialized" in w for w in warnings)


def _triton_tool(name: str) -> Path | None:
    """A CUDA tool that ships with Triton, the one that compiled the kernel (ptxas, cuobjdump), or None."""
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return path if path.exists() else None


def matmul_loop_spills(cubin: bytes) -> int | None:
    """Spill instructions inside the kernel's matmul loops (see `spills_in_matmul_loops`); None when cuobjdump
    cannot be run."""
    sass = cubin_sass(cubin)
    return None if sass is None else spills_in_matmul_loops(sass)


def cubin_sass(cubin: bytes) -> str | None:
    """cuobjdump's SASS listing of a cubin (Triton's own cuobjdump); None when it cannot be run."""
    return _cuobjdump(cubin, "-sass")


def cubin_resource_usage(cubin: bytes) -> str | None:
    """cuobjdump's resource usage of a cubin (`REG:168 STACK:0 SHARED:...` per kernel); None when it cannot be run."""
    return _cuobjdump(cubin, "-res-usage")


def _cuobjdump(cubin: bytes, option: str) -> str | None:
    cuobjdump = _triton_tool("cuobjdump")
    if cuobjdump is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        try:
            run = subprocess.run([str(cuobjdump), option, str(path)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return None
    return run.stdout if run.returncode == 0 else None


def compiled_kernels(module) -> list[dict]:
    """One entry per kernel function of the module that compiled in this process. Its variants (one per
    specialization: dtypes, divisibility, constexprs such as a ragged key length) are merged: the most registers,
    spills (spill instructions in the matmul loop) and shared memory any of them needs, and whether ptxas
    serialized the wgmmas of any it was asked about (None: not asked)."""
    merged: dict[str, dict] = {}
    for count, (name, kernel) in enumerate(_loaded(module)):
        found = kernel_facts(name, kernel, ask_tools=count < ASKED_AT_MOST)
        merged[name] = _merge(merged[name], found) if name in merged else found
    return list(merged.values())


def _loaded(module):
    for name, obj in sorted(vars(module).items()):
        caches = getattr(obj, "device_caches", None)
        if not isinstance(caches, dict):  # not a @triton.jit / @gluon.jit function
            continue
        for device_cache in list(caches.values()):
            for kernel in list(device_cache[0].values()):
                yield name, kernel


def kernel_facts(name: str, kernel, ask_tools: bool = True) -> dict:
    """One compiled kernel: its resources as loaded on the GPU, ptxas's performance warnings, and the spill
    instructions in its matmul loops (those two only when `ask_tools`: each reruns a CUDA tool)."""
    asked = ask_tools and "ptx" in kernel.asm
    warnings = ptxas_performance_warnings(kernel.asm["ptx"]) if asked else []
    in_loops = matmul_loop_spills(kernel.asm["cubin"]) if ask_tools and "cubin" in kernel.asm else None
    return {"name": name, "variants": 1, "registers": getattr(kernel, "n_regs", None),
            "spills": getattr(kernel, "n_spills", None), "loop_spill_instructions": in_loops,
            "shared_bytes": kernel.metadata.shared, "num_warps": kernel.metadata.num_warps,
            "wgmma_serialized": wgmma_serialized(warnings) if asked else None, "ptxas_warnings": warnings}


def _merge(a: dict, b: dict) -> dict:
    def most(key):
        known = [x[key] for x in (a, b) if x[key] is not None]
        return max(known) if known else None

    answers = [x["wgmma_serialized"] for x in (a, b) if x["wgmma_serialized"] is not None]
    return {"name": a["name"], "variants": a["variants"] + b["variants"], "registers": most("registers"),
            "spills": most("spills"), "loop_spill_instructions": most("loop_spill_instructions"),
            "shared_bytes": most("shared_bytes"), "num_warps": most("num_warps"),
            "wgmma_serialized": any(answers) if answers else None,
            "ptxas_warnings": a["ptxas_warnings"] + [w for w in b["ptxas_warnings"] if w not in a["ptxas_warnings"]]}


def describe(kernel: dict) -> str:
    """One line for a report: `_attn_fwd (4 variants): 168 registers a thread, no spills, 160 KiB shared memory`
    (the most any variant needs)."""
    if "error" in kernel:
        return f"no compiler report ({kernel['error']})"
    registers, spills = kernel.get("registers"), kernel.get("spills")
    parts = ([] if registers is None else [f"{registers} registers a thread"]) + \
        ([] if spills is None else ["no spills" if spills == 0 else f"{spills} bytes spilled to local memory"
                                    + _where_spilled(kernel.get("loop_spill_instructions"))]) + \
        [f"{(kernel.get('shared_bytes') or 0) / 1024:.0f} KiB shared memory"]
    if kernel.get("wgmma_serialized"):
        parts.append("ptxas serialized its wgmmas (each waited for before the next)")
    variants = kernel.get("variants", 1)
    return f"{kernel.get('name')}" + (f" ({variants} variants)" if variants > 1 else "") + ": " + ", ".join(parts)


def _where_spilled(in_loops: int | None) -> str:
    if in_loops is None:
        return ""
    if in_loops == 0:
        return " (none of it in the matmul loop)"
    return f" ({in_loops} spill instructions in the matmul loop)"
