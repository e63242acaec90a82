"""The compiler report (verifier/compiled.py): what the verifier says of a candidate's compiled kernels."""
from __future__ import annotations

import importlib.util

from cli import metric_lines
from verifier.compiled import compiled_kernels, describe, kernel_facts
from verifier.sass import matmul_loops, spills_in_matmul_loops
from verifier.verdict import Metrics


def facts(**changes) -> dict:
    return {"name": "_attn_fwd", "variants": 1, "registers": 168, "spills": 0, "shared_bytes": 164160, "num_warps": 4,
            "wgmma_serialized": False, "ptxas_warnings": [], **changes}


def test_a_clean_kernel_is_one_plain_line():
    assert describe(facts()) == "_attn_fwd: 168 registers a thread, no spills, 160 KiB shared memory"


def test_spills_and_serialized_matmuls_are_said():
    line = describe(facts(registers=255, spills=96, wgmma_serialized=True))
    assert "255 registers a thread, 96 bytes spilled to local memory" in line
    assert "ptxas serialized its wgmmas" in line
    assert describe({"error": "KeyError: 0"}) == "no compiler report (KeyError: 0)"


def test_the_report_says_whether_a_spill_is_in_the_matmul_loop():
    cold = describe(facts(spills=24, loop_spill_instructions=0))
    assert "24 bytes spilled to local memory (none of it in the matmul loop)" in cold
    assert "(12 spill instructions in the matmul loop)" in describe(facts(spills=96, loop_spill_instructions=12))
    assert describe(facts(spills=96, loop_spill_instructions=None)).endswith("96 bytes spilled to local memory, "
                                                                            "160 KiB shared memory")


def listing(*instructions: str) -> str:
    """A cuobjdump -sass listing of these instructions, 16 bytes apart from address 0."""
    return "\n".join(f"        /*{16 * i:04x}*/                   {text} ;   /* 0x000fe20000400000 */"
                     for i, text in enumerate(instructions))


def test_spills_count_only_inside_the_innermost_loop_that_issues_matmuls():
    """An outer loop over tiles reloads a spilled value once a tile: not the matmul loop. A barrier's spin loop holds
    no matmul: not one either. The key loop (a backward branch around HGMMA) is."""
    sass = listing(
        "STL [R1], R2",                       # 0x00: saved before any loop
        "LDL R3, [R1]",                       # 0x10: tile loop starts here: one reload a tile
        "SYNCS.PHASECHK.TRANS64 P0, [R4], R5",  # 0x20: spin loop
        "@!P0 BRA 0x20",                      # 0x30
        "HGMMA.64x64x16.F32.BF16 R24, R56, gdesc[UR4], RZ, !UPT",  # 0x40: key loop starts here
        "LDL R6, [R1+0x8]",                   # 0x50: in the key loop
        "STL [R1+0x8], R6",                   # 0x60: in the key loop
        "@P1 BRA 0x40",                       # 0x70: key loop's back edge
        "@P2 BRA 0x10",                       # 0x80: tile loop's back edge
        "LDL R7, [R1]",                       # 0x90: after every loop
        "EXIT")
    assert spills_in_matmul_loops(sass) == 2
    assert spills_in_matmul_loops(listing("LDL R3, [R1]", "HGMMA.64x64x16.F32.BF16 R24, R56, gdesc[UR4], RZ, !UPT",
                                          "EXIT")) == 0  # no loop at all


def test_a_wait_retried_out_of_line_is_no_loop_around_the_code_it_jumps_back_over():
    """ptxas puts an mbarrier wait's retry loop after the EXIT; it jumps back to the instruction after the wait.
    That backward jump closes no loop: the spills and the matmul between the wait and the EXIT run once."""
    sass = listing(
        "HGMMA.64x64x16.F32.BF16 R24, R56, gdesc[UR4], RZ, !UPT",  # 0x00: the key loop
        "LDL R3, [R1]",                        # 0x10: in the key loop
        "@P1 BRA 0x0",                         # 0x20: its back edge
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R4], R5",  # 0x30: a wait's first try
        "@!P0 BRA 0x90",                       # 0x40: not yet: retry out of line
        "STL [R1], R2",                        # 0x50: runs once
        "HGMMA.64x64x16.F32.BF16 R24, R56, gdesc[UR4], RZ, !UPT",  # 0x60: the last block's matmul, once
        "LDL R3, [R1]",                        # 0x70: runs once
        "EXIT",                                # 0x80
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R4], R5",  # 0x90: the retry loop
        "@!P0 BRA 0x90",                       # 0xa0
        "BRA 0x50")                            # 0xb0: back after the wait
    assert spills_in_matmul_loops(sass) == 1  # the key loop's LDL; those after the wait run once


def test_each_innermost_matmul_loop_is_listed_with_its_whole_body():
    """What the compiler report sizes a key loop by: the instructions from its header to its back edge, an
    out-of-line retry of a wait inside it included; not the tile loop around it, nor the code after it."""
    sass = listing(
        "LDL R3, [R1]",                        # 0x00: tile loop
        "HGMMA.64x64x16.F32.BF16 R24, R56, gdesc[UR4], RZ, !UPT",  # 0x10: key loop
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R4], R5",  # 0x20: a wait in the key loop
        "@!P0 BRA 0x90",                       # 0x30: retried out of line
        "FMUL R1, R2, R3",                     # 0x40
        "@P1 BRA 0x10",                        # 0x50: the key loop's back edge
        "@P2 BRA 0x0",                         # 0x60: the tile loop's
        "FADD R1, R2, R3",                     # 0x70: after both
        "EXIT",                                # 0x80
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R4], R5",  # 0x90: the retry
        "@!P0 BRA 0x90",                       # 0xa0
        "BRA 0x40")                            # 0xb0: back into the key loop
    [loop] = matmul_loops(sass)
    assert [text.split()[0] for text in loop] == ["HGMMA.64x64x16.F32.BF16", "SYNCS.PHASECHK.TRANS64.TRYWAIT",
                                                  "@!P0", "FMUL", "@P1", "SYNCS.PHASECHK.TRANS64.TRYWAIT", "@!P0",
                                                  "BRA"]
    assert matmul_loops(listing("HGMMA.64x64x16.F32.BF16 R24, R56, gdesc[UR4], RZ, !UPT", "EXIT")) == []


def test_the_verify_report_lists_each_compiled_kernel():
    """What `kgen verify` prints for an accepted, timed kernel (a mask spec compiles its block map too)."""
    m = Metrics(max_error=0.01, error_budget_used=0.1, ms=1.0, ms_min=0.9, ms_spread=0.02, tflops=500.0,
                launches_per_call=1, launch_names=["_attn_fwd"], extra_memory_bytes=0,
                compiled=[facts(name="_block_map", registers=40, shared_bytes=0), facts()])
    lines = metric_lines(m)
    assert "compiled _block_map: 40 registers a thread, no spills, 0 KiB shared memory" in lines
    assert lines[-1] == "compiled _attn_fwd: 168 registers a thread, no spills, 160 KiB shared memory"
    m.compiled[1]["variants"] = 4
    assert metric_lines(m)[-1].startswith("compiled _attn_fwd (4 variants): 168 registers")


def test_an_interpreted_run_has_no_compiled_kernels(tmp_path, monkeypatch):
    """Under the CPU interpreter nothing is compiled, so the report is empty rather than made up."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when @triton.jit runs, at the module's import
    path = tmp_path / "k.py"
    path.write_text("import triton\nimport triton.language as tl\n\n\n@triton.jit\ndef _k(X):\n"
                    "    tl.store(X, tl.load(X) + 1)\n")
    spec = importlib.util.spec_from_file_location("k", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch
    x = torch.zeros(1)
    module._k[(1,)](x)
    assert x.item() == 1 and compiled_kernels(module) == []


def test_the_variants_of_a_kernel_are_merged_and_a_serialized_one_shows(specs):
    """Two real sm_90 compiles of `_attn_fwd` (the Gluon kernel with 64 and with 128 query rows a warpgroup; ptxas
    serializes the wgmmas of the second), kept the way Triton keeps a launched @jit function's variants, make one
    entry: the most shared memory either needs, and ptxas's message."""
    import sys
    import types
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from hopper_compile import compiled_builtin

    from agent.builtin.template import KernelConfig

    small, large = (compiled_builtin(str(specs / "noop.py"), KernelConfig(m, 64, 4, s, gluon=True), head_dim=128)
                    for m, s in ((128, 4), (256, 2)))

    class Launched:  # a @jit function's per-device caches: (compiled kernels by key, and what binds arguments)
        device_caches = {0: ({"64 rows a warpgroup": small, "128 rows a warpgroup": large}, None, None, None, None)}

    [kernel] = compiled_kernels(types.SimpleNamespace(_attn_fwd=Launched(), SCALE=2.0))
    assert kernel["name"] == "_attn_fwd" and kernel["variants"] == 2
    assert kernel["shared_bytes"] == max(small.metadata.shared, large.metadata.shared)
    assert kernel["wgmma_serialized"] is True and any("C751" in w for w in kernel["ptxas_warnings"])
    assert kernel["registers"] is None  # known once loaded on a GPU; the CPU compile loads nothing
    # read from the machine code, which the CPU compile has: the 128-row variant spills in its key loop too
    assert kernel["loop_spill_instructions"] > 0 and kernel_facts("_attn_fwd", small)["loop_spill_instructions"] == 0
    assert describe(kernel).startswith("_attn_fwd (2 variants): 192 KiB shared memory, ptxas serialized its wgmmas")
