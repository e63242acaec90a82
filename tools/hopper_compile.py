"""Compile a built-in kernel for Hopper (sm_90) on any machine, no GPU needed, and report what the GPU would get.

Triton compiles for a named target without a device, and ships ptxas and cuobjdump, so the register count,
spills, shared memory (against the 227 KB a block may have), the tensor-core instructions of a config and whether
ptxas had to serialize them can be read here before any GPU time is spent. Two configs that compile to the same
SASS get the same `sass_sha`.

    python tools/hopper_compile.py --spec examples/specs/causal.py --config "BM128 BN128 w8 s3 tma"

The GPU compiles more variants of a kernel than the one a call's shapes name: Triton specializes an integer
argument equal to 1 as a constant (`--one SKV`: the variant for a single key, which the verifier runs), and key
lengths the block does not divide get their own (`--ragged`).

    python tools/hopper_compile.py --spec examples/specs/noop.py --config "BM128 BN64 w4 s4 gluon" --ragged --one SKV
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

from agent.builtin.lower import lower_spec  # noqa: E402
from agent.builtin.template import KernelConfig, render_kernel  # noqa: E402
from benchmarks.bench import load_module  # noqa: E402
from verifier.compiled import (cubin_resource_usage, cubin_sass, ptxas_performance_warnings,  # noqa: E402
                               wgmma_serialized)
from verifier.sass import matmul_loops, sass_listing, sass_opcode, spills_in_matmul_loops  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402

SHARED_LIMIT = 232448  # bytes of shared memory one block may have on an H100
# wgmma waits in SASS: for all but the last group (one still in flight), and for every group
PARTIAL_WGMMA_WAIT = re.compile(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x1\b")
FULL_WGMMA_WAIT = re.compile(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x0\b")
TRITON_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64", "int8": "i8",
                "int16": "i16", "int32": "i32", "int64": "i64", "uint8": "u8", "bool": "i1"}


def compile_builtin(spec_path: str, cfg: KernelConfig, head_dim: int, dtype: str = "bf16",
                    even_kv: bool = True, runs: bool = True, light: int = 0, ones: tuple[str, ...] = (),
                    apart: bool = False) -> dict:
    """Render the built-in kernel for `cfg` and compile its attention kernel for sm_90; report the result."""
    return {"config": cfg.label(),
            **facts(compiled_builtin(spec_path, cfg, head_dim, dtype, even_kv, runs, light, ones, apart))}


def compiled_builtin(spec_path: str, cfg: KernelConfig, head_dim: int, dtype: str = "bf16",
                     even_kv: bool = True, runs: bool = True, light: int = 0, ones: tuple[str, ...] = (),
                     apart: bool = False, transform=None):
    """The built-in kernel's `_attn_fwd` for `cfg`, compiled for sm_90 (a Triton CompiledKernel, not loaded).
    `light`: the mask's conjuncts left out of light cut blocks (the block map's choice; 0: none). `ones`: integer
    arguments passed as 1 (see `_passed_as_one`). `apart`: the Gluon kernel whose two consumers skip or run
    unmasked the blocks the block map sorts for their halves of a tile's rows (the map's choice). `transform`: a
    function of the rendered source that returns the source to compile (an instrumented kernel, say)."""
    spec = load_spec(SpecFiles(spec_path))
    source = render_kernel(spec.name, lower_spec(spec), cfg)
    if transform is not None:
        source = transform(source)
    with tempfile.TemporaryDirectory(prefix="kgen-hopper-compile-") as tmp:  # the module's file, gone afterwards
        module = load_module(source, Path(tmp))
        return (_compile_gluon(module, cfg, spec, head_dim, dtype, even_kv, light, ones, apart) if cfg.gluon
                else _compile_triton(module, cfg, spec, head_dim, dtype, even_kv, runs, light, ones))


def _compile_triton(module, cfg: KernelConfig, spec, head_dim: int, dtype: str, even_kv: bool, runs: bool,
                    light: int, ones: tuple[str, ...]):
    """The Triton kernel's `_attn_fwd`, its pointer or descriptor types as the wrapper would pass them."""
    kernel = module._attn_fwd
    dp = triton.next_power_of_2(max(head_dim, 16))
    signature = {name: _type(name, cfg, spec, dp, dtype) for name in kernel.arg_names}
    constants = dict(BM=cfg.block_m, BN=cfg.block_n, D=head_dim, DP=dp, EVEN_D=dp == head_dim, SCALE_POSITIVE=True,
                     EVEN_KV=even_kv)
    if spec.mask_mod:
        constants.update(FULL_RUNS=runs, PART_RUNS=runs, LIGHT=light)
    if "P" in kernel.arg_names:  # a dilated mask's kernel with its residue classes apart
        constants["P"] = module.RESIDUES
    if "Q_SHORT" in kernel.arg_names:
        _second_descriptors(signature, constants, even_kv, [(name, f"{name}_SHORT") for name in "QKVO"])
    _passed_as_one(signature, constants, ones)
    return compile_for_hopper(kernel, signature, constants, dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def _second_descriptors(signature: dict, constants: dict, even_kv: bool, names: list[tuple[str, str]]) -> None:
    """A dilated mask's second descriptors (`_class_parts`), where the kernel takes them: None at lengths the
    residue classes divide, else of the first one's type (`--ragged` means both)."""
    for first, second in names:
        if even_kv:
            constants[second] = None
            signature[second] = "constexpr"
        else:
            signature[second] = signature[first]


class NotAnIntegerArgument(ValueError):
    """A name given to `--one` that is not an integer argument of the kernel."""


def _passed_as_one(signature: dict, constants: dict, ones: tuple[str, ...]) -> None:
    """Compile the integer arguments named in `ones` as the constant 1. Triton's launcher does so for any integer
    argument equal to 1 (a key length of 1, a GQA group of 1), so the GPU compiles variants a compile without
    them never sees: a loop over one key block folds away, and ptxas may then serialize wgmmas that it did not
    serialize before."""
    integers = [n for n, t in signature.items() if t == "i32"]
    for name in ones:
        if name not in integers:
            raise NotAnIntegerArgument(f"{name!r} is not an integer argument of this kernel "
                                       f"(its integer arguments: {', '.join(integers)})")
        signature[name] = "constexpr"
        constants[name] = 1


def compile_for_hopper(kernel, signature: dict, constants: dict, options: dict):
    """Compile one @triton.jit or Gluon @gluon.jit kernel for sm_90."""
    source = (GluonASTSource if kernel.is_gluon() else ASTSource)(fn=kernel, signature=signature,
                                                                  constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def facts(compiled) -> dict:
    """Shared memory, the SASS facts, and whether ptxas serialized the wgmmas: what the verifier reports of a
    candidate's kernels on a GPU (registers and spills come from the SASS here, since nothing is loaded)."""
    warnings = ptxas_performance_warnings(compiled.asm["ptx"])
    return {"shared_bytes": compiled.metadata.shared, "fits_shared_memory": compiled.metadata.shared <= SHARED_LIMIT,
            **_sass_facts(compiled.asm["cubin"]), "wgmma_serialized": wgmma_serialized(warnings),
            "ptxas_warnings": warnings}


def _compile_gluon(module, cfg: KernelConfig, spec, head_dim: int, dtype: str, even_kv: bool, light: int,
                   ones: tuple[str, ...], apart: bool):
    """The Gluon kernel's `_attn_fwd`, its descriptor types taken from descriptors over a CPU tensor."""
    import torch
    from triton.runtime.jit import mangle_type
    t = torch.empty(1, 1, 256, head_dim, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])
    rows = module.CONSUMER_ROWS  # each consumer warpgroup's query rows
    descs = [module._descriptor(t, r) for r in (rows, cfg.block_n, cfg.block_n, rows)]
    # a dilated mask's kernel with its residue classes apart (P), at lengths they divide unless not even_kv
    constants = dict(BMH=rows, BN=cfg.block_n, D=head_dim, STAGES=cfg.num_stages, EVEN_KV=even_kv,
                     SCALE_POSITIVE=True, REGS=module.CONSUMER_REGISTERS, LIGHT=light, APART=apart,
                     P=getattr(module, "RESIDUES", 1), Q_SLOTS=module._q_slots(head_dim, None, SHARED_LIMIT))
    constants = {name: value for name, value in constants.items() if name in module._attn_fwd.arg_names}
    signature = dict(zip(["q_desc", "k_desc", "v_desc", "o_desc"], map(mangle_type, descs)))
    if "P" in constants:
        _second_descriptors(signature, constants, even_kv, [(f"{name}_desc", f"{name}_short") for name in "qkvo"])
    signature.update({name: "constexpr" if name in constants else _type(name, cfg, spec, head_dim, dtype)
                      for name in module._attn_fwd.arg_names if name not in signature})
    _passed_as_one(signature, constants, ones)
    return compile_for_hopper(module._attn_fwd, signature, constants, dict(num_warps=cfg.num_warps))


def _type(name: str, cfg: KernelConfig, spec, dp: int, dtype: str) -> str:
    """The Triton signature type of one `_attn_fwd` argument, as the wrapper would pass it."""
    if name in ("BM", "BN", "D", "DP", "EVEN_D", "SCALE_POSITIVE", "FULL_RUNS", "PART_RUNS", "EVEN_KV", "LIGHT", "P"):
        return "constexpr"
    if name in ("Q", "K", "V", "O"):
        rows = cfg.block_m if name in ("Q", "O") else cfg.block_n
        return f"tensordesc<{dtype}[1,1,{rows},{dp}]>" if cfg.tma else f"*{dtype}"
    if name in ("MAP", "PART_IDX", "FULL_IDX", "BLOCKS", "OFFSETS", "TILES"):
        return "*i32"
    if name == "qk_scale":
        return "fp32"
    buffer = name.removeprefix("buf_")
    if name.startswith("buf_") and buffer in spec.buffers:
        return "*" + TRITON_TYPES[str(spec.buffers[buffer].dtype).removeprefix("torch.")]
    return "i32"  # sizes, strides, counts


def _sass_facts(cubin: bytes) -> dict:
    usage = cubin_resource_usage(cubin) or ""
    sass = cubin_sass(cubin) or ""
    instructions = [text for _, text in sass_listing(sass)]
    opcodes = [sass_opcode(i) for i in instructions if i]
    registers = re.search(r"REG:(\d+)", usage)
    return {"registers": int(registers.group(1)) if registers else None,
            "spill_instructions": sum(op.split(".")[0] in ("LDL", "STL") for op in opcodes),
            # of those, the ones inside the matmul (key) loop, run on every trip
            "matmul_loop_spill_instructions": spills_in_matmul_loops(sass),
            # the size of each key loop's body (a trip; a masked kernel has one loop per kind of key block, and
            # each trip runs two blocks in the Gluon kernel): what per-score work costs in issued instructions
            "matmul_loop_instructions": [len(loop) for loop in matmul_loops(sass)],
            "tensor_core_instructions": sum("GMMA" in op for op in opcodes),
            # matmuls whose left operand comes from registers (P, or Q kept there) rather than shared memory
            "register_operand_wgmmas": sum(bool(re.match(r"HGMMA\.\S+ R\d+, R\d+,", i)) for i in instructions),
            # waits that leave one wgmma group in flight: the kernel overlaps a matmul with other work
            "partial_wgmma_waits": sum(bool(PARTIAL_WGMMA_WAIT.match(i)) for i in instructions),
            # how much of the softmax runs while the warpgroup's own PV is in flight (FlashAttention-3's overlap)
            "exponentials_under_pv": exponentials_under_pv(instructions),
            # the special-function unit (exp2, tanh, reciprocal...) issues 16 per clock per SM: a softmax budget
            "special_function_instructions": dict(sorted(Counter(op.split(".")[1] for op in opcodes
                                                                 if op.startswith("MUFU.")).items())),
            "sass_instructions": len(instructions),
            "sass_sha": hashlib.sha256("\n".join(instructions).encode()).hexdigest()[:16]}


def exponentials_under_pv(instructions: list[str]) -> list[int]:
    """For each wait that leaves one wgmma group in flight (`WARPGROUP.DEPBAR.LE gsb0, 0x1`: QK^T done, PV still
    running), the exponentials (MUFU.EX2) issued before the next full wait (`0x0`): the part of the softmax that
    overlaps the warpgroup's own PV. ptxas, not the source order, decides it: the shipped Gluon kernel gets 1-2 of
    34 a 64-key block, FlashAttention-4's Hopper kernel 11 of 66 a 128-key block (benchmarks/MEASURED.md,
    sixteenth session)."""
    counts, open_count = [], None
    for text in instructions:
        if PARTIAL_WGMMA_WAIT.match(text):
            open_count = 0
        elif FULL_WGMMA_WAIT.match(text):
            if open_count is not None:
                counts.append(open_count)
            open_count = None
        elif open_count is not None and sass_opcode(text).startswith("MUFU.EX2"):
            open_count += 1
    return counts


def _config(label: str) -> KernelConfig:
    try:
        return KernelConfig.from_label(label)
    except ValueError as e:  # argparse shows this message, not a generic one
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="spec file (score_mod and/or mask_mod)")
    parser.add_argument("--config", default="BM128 BN64 w8 s3", type=_config,
                        help='a config label, as the benchmark and run reports write it: "BM128 BN128 w8 s3 tma"')
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--light", type=int, default=0,
                        help="the mask's conjuncts (a bitmask) left out of light cut blocks, as the block map picks")
    parser.add_argument("--apart", action="store_true",
                        help="the Gluon kernel's variant whose consumers sort some blocks for their own rows (the "
                             "block map picks it for banded masks, a sliding window at 64-key blocks)")
    parser.add_argument("--ragged", action="store_true",
                        help="the variant for key lengths the key block does not divide (EVEN_KV=False); for a "
                             "dilated mask's descriptor kernels, lengths P does not divide (two descriptors a tensor)")
    parser.add_argument("--one", action="append", default=[], metavar="ARGUMENT",
                        help="an integer argument of the kernel passed as 1, which Triton's launcher compiles as a "
                             "constant (SKV: a key length of 1; GROUP: no GQA); may be given more than once")
    args = parser.parse_args(argv)
    try:
        report = compile_builtin(args.spec, args.config, args.head_dim, even_kv=not args.ragged, light=args.light,
                                 ones=tuple(args.one), apart=args.apart)
    except NotAnIntegerArgument as e:
        parser.error(str(e))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
