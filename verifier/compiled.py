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
    cuobjdump = _triton_tool("cuobjdump")
    if cuobjdump is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        try:
            run = subprocess.run([str(cuobjdump), "-sass", str(path)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return None
    return spills_in_matmul_loops(run.stdout) if run.returncode == 0 else None


def spills_in_matmul_loops(sass: str) -> int:
    """Local-memory loads and stores (LDL, STL: spilled registers) inside the innermost loops that issue matrix
    instructions, in a cuobjdump -sass listing: the key loop of an attention kernel, whose every trip they slow. A
    backward branch closes a loop that starts at its target; of the loops holding a matrix instruction, those with
    no such loop inside them are the matmul loops (an outer loop over query tiles is not one, nor a barrier's spin
    loop)."""
    listed = sass_listing(sass)
    loops = [(int(target.group(1), 16), address) for address, text in listed
             if sass_opcode(text).startswith("BRA") and (target := re.search(r"0x([0-9a-f]+)\s*;?$", text))
             and int(target.group(1), 16) <= address]
    matmul_loops = [(start, end) for start, end in loops
                    if any(start <= a <= end and "MMA" in sass_opcode(t) for a, t in listed)]
    innermost = [(s, e) for s, e in matmul_loops
                 if not any((s, e) != (s2, e2) and s <= s2 and e2 <= e for s2, e2 in matmul_loops)]
    return sum(1 for address, text in listed if sass_opcode(text).split(".")[0] in ("LDL", "STL")
               and any(start <= address <= end for start, end in innermost))


def sass_listing(sass: str) -> list[tuple[int, str]]:
    """(address, instruction) of each instruction of a cuobjdump -sass listing, `/*0a30*/  FMUL R1, R2, R3 ;`;
    addresses grow past four hex digits in kernels longer than 4096 instructions (the Gluon kernels are)."""
    return [(int(address, 16), text.strip()) for address, text in
            re.findall(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*(?:/\* 0x[0-9a-f]+ \*/)?\s*$", sass, re.MULTILINE)]


def sass_opcode(instruction: str) -> str:
    """`FMUL` of `@P0 FMUL R1, R2, R3 ;`: the first word that is not a predicate."""
    return next((word for word in instruction.split() if not word.startswith("@")), "")


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
