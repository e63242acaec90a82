"""tools/hopper_compile.py: built-in kernels compiled for sm_90 on a machine without a GPU."""
import json
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from hopper_compile import (SHARED_LIMIT, compile_builtin, compiled_builtin, exponentials_under_pv, facts,  # noqa: E402
                            main)

from agent.builtin.lower import lower_spec  # noqa: E402
from agent.builtin.template import KernelConfig, render_kernel  # noqa: E402
from benchmarks.bench import load_module  # noqa: E402
from verifier.sass import sass_listing  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402


@pytest.fixture(scope="module")
def causal(specs):
    return str(specs / "causal.py")


def test_the_d128_hopper_config_fits_and_uses_the_tensor_cores(causal):
    report = compile_builtin(causal, KernelConfig(128, 128, 8, 3, tma=True), head_dim=128)
    assert report["fits_shared_memory"] and 200_000 < report["shared_bytes"] <= 232448
    assert report["tensor_core_instructions"] > 0 and 0 < report["registers"] <= 255
    # P @ V reads P from registers, Q @ K^T reads Q from shared memory: half the matmuls each way
    assert 2 * report["register_operand_wgmmas"] == report["tensor_core_instructions"]
    assert report["spill_instructions"] == 0 and not report["wgmma_serialized"]


def test_compiling_leaves_no_file_behind(causal, tmp_path, monkeypatch):
    """Each compile writes the rendered kernel to a module file: it goes when the compile is done (a CPU sweep of
    configs would otherwise leave thousands in the temp folder)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for cfg in (KernelConfig(64, 64, 4, 2, tma=True), KernelConfig(128, 64, 4, 2, gluon=True)):
        assert compile_builtin(causal, cfg, head_dim=64)["tensor_core_instructions"] > 0
    assert list(tmp_path.rglob("*.py")) == []  # (torch may make its inductor cache folder there)


def test_the_command_line_compiles_the_ragged_length_variant_on_request(specs, capsys):
    """`--ragged` compiles the kernel as run at key lengths the key block does not divide, where the bounds checks
    are (the 192-row Gluon kernel spills outside its key loop there only)."""
    reports = []
    for extra in ([], ["--ragged"]):
        assert main(["--spec", str(specs / "noop.py"), "--config", "BM192 BN64 w4 s3 gluon persistent",
                     "--head-dim", "64", *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    even, ragged = reports
    assert even["sass_sha"] != ragged["sass_sha"] and even["spill_instructions"] == 0
    assert ragged["matmul_loop_spill_instructions"] == 0 and not ragged["wgmma_serialized"]


@pytest.mark.parametrize("spec, config", [("noop", "BM128 BN128 w4 s2 gluon persistent"),
                                          ("noop", "BM128 BN64 w4 s4 gluon"),
                                          ("key_padding", "BM128 BN128 w4 s2 gluon persistent")])
def test_the_gluon_kernel_at_a_key_length_of_one_keeps_its_wgmmas_apart(specs, capsys, spec, config):
    """Triton's launcher compiles an integer argument equal to 1 as a constant, so a call with a single key (one of
    the verifier's trials) runs a variant of its own: its key loop folds away. A tile change that finished one
    tile under the next one's QK^T (branch `cross-tile-finish`) made ptxas serialize that variant's wgmmas in the
    dense kernel, which only the GPU tests saw until `--one SKV` compiled it here. (A masked kernel takes no
    EVEN_KV: `--ragged` changes nothing there.)"""
    reports = []
    for extra in ([], ["--one", "SKV"]):
        assert main(["--spec", str(specs / f"{spec}.py"), "--config", config, "--head-dim", "64", "--ragged",
                     *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    any_length, one_key = reports
    assert any_length["sass_sha"] != one_key["sass_sha"]  # the constant took effect
    assert one_key["wgmma_serialized"] is False and one_key["ptxas_warnings"] == []


def test_only_an_integer_argument_can_be_passed_as_one(specs, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--spec", str(specs / "noop.py"), "--config", "BM128 BN64 w4 s4 gluon", "--one", "qk_scale"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "'qk_scale' is not an integer argument" in error and "SKV" in error  # it lists the ones there are


@pytest.mark.parametrize("extra", [[], ["--one", "SKV"], ["--ragged"]])
def test_the_gluon_kernel_whose_consumers_sort_their_own_blocks_keeps_its_wgmmas_apart(specs, capsys, extra):
    """The variant the block map picks for a sliding window at 64-key blocks (`--apart`): each consumer runs a cut
    run ahead of its whole blocks as well, so three masked-or-not key loops a consumer where the other variant has
    two; at any key length and at a single key, no spill and no serialized wgmma."""
    reports = []
    for apart in ([], ["--apart"]):
        assert main(["--spec", str(specs / "sliding_window.py"), "--config", "BM128 BN64 w4 s4 gluon persistent",
                     *apart, *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    together, apart = reports
    assert len(apart["matmul_loop_instructions"]) == len(together["matmul_loop_instructions"]) + 2
    assert apart["spill_instructions"] == 0 and apart["wgmma_serialized"] is False and apart["ptxas_warnings"] == []


def test_one_stage_more_does_not_fit(causal):
    """What the H100 refused at launch (OutOfResources: shared memory) is visible before any GPU time is spent."""
    report = compile_builtin(causal, KernelConfig(128, 128, 8, 4, tma=True), head_dim=128)
    assert not report["fits_shared_memory"] and report["shared_bytes"] > 232448


def test_warp_specialization_changes_nothing_on_hopper_with_the_pinned_triton(causal):
    """Why the search leaves warp_specialize out (benchmarks/MEASURED.md, prompts/hopper.j2): the same SASS with and
    without it."""
    plain = compile_builtin(causal, KernelConfig(128, 64, 8, 3, tma=True), head_dim=128)
    specialized = compile_builtin(causal, KernelConfig(128, 64, 8, 3, tma=True, warp_specialize=True), head_dim=128)
    assert plain["sass_sha"] == specialized["sass_sha"]


def test_tanh_is_one_special_function_instruction_on_hopper(specs):
    """softcap's tanh compiles to the GPU's MUFU.TANH (the interpreter runs the exact form instead), and the
    output's normalisation is one reciprocal per row, not a division per element (64 a thread here). The other
    reciprocals are the integer divisions that split the program id into query block, batch and head (by runtime
    counts): 4 in all before the grid became one axis, 5 since."""
    report = compile_builtin(str(specs / "softcap.py"), KernelConfig(128, 128, 8, 3, tma=True), head_dim=128)
    functions = report["special_function_instructions"]
    assert functions["TANH"] == functions["EX2"] - 2  # one per score; the two extra exp2 rescale the row sums
    assert functions.get("RCP", 0) <= 5


@pytest.mark.parametrize("spec, cfg, head_dim", [
    ("causal.py", KernelConfig(128, 128, 8, 3, tma=True), 128),
    ("causal.py", KernelConfig(128, 128, 8, 4, tma=True), 128),
    ("noop.py", KernelConfig(64, 64, 4, 3, tma=True), 128),
    ("rel_pos.py", KernelConfig(64, 128, 4, 2, tma=True), 64),
    ("noop.py", KernelConfig(128, 64, 4, 5, gluon=True), 128)])
def test_the_shared_memory_estimate_matches_what_triton_allocates(specs, spec, cfg, head_dim):
    """The estimate the search uses to skip configs that cannot launch, against the compiler's own figure (the
    Gluon kernel stages its output tile too)."""
    from agent.proposers import descriptor_shared_bytes

    compiled = compile_builtin(str(specs / spec), cfg, head_dim=head_dim)["shared_bytes"]
    assert abs(descriptor_shared_bytes(cfg, head_dim) - compiled) <= 1024


@pytest.mark.parametrize("head_dim, block_n, split", [(64, 128, True), (128, 128, False), (64, 64, False)])
def test_the_gluon_kernel_takes_each_row_max_in_two_chains_only_at_d64_with_128_key_blocks(specs, head_dim, block_n,
                                                                                            split):
    """Where it was measured to pay (`_split_row_max`): the scores are reshaped so that each row's max runs as two
    chains, which shows in the kernel's IR as reshapes. Elsewhere the kernel is the plain one. Either way the key
    loop keeps a wgmma in flight and does not spill (the masked kernel spills a little outside it)."""
    cfg = KernelConfig(128, block_n, 4, 3, gluon=True, persistent=True)
    compiled = compiled_builtin(str(specs / "key_padding.py"), cfg, head_dim)
    assert ("tt.reshape" in compiled.asm["ttgir"]) == split
    report = facts(compiled)
    assert report["matmul_loop_spill_instructions"] == 0 and report["partial_wgmma_waits"] > 0
    assert not report["wgmma_serialized"]


@pytest.mark.parametrize("spec, head_dim", [("noop", 128), ("rel_pos", 128), ("alibi", 64), ("softcap", 128)])
def test_the_builtin_gluon_kernel_compiles_for_hopper(specs, spec, head_dim):
    """The built-in proposer's Gluon config, with each dense spec's score_mod inlined: it fits, keeps a wgmma in
    flight, does not spill in its key loop, reads Q from registers (every matmul's left operand: Q or P);
    softcap's tanh stays one special-function instruction."""
    report = compile_builtin(str(specs / f"{spec}.py"), KernelConfig(128, 64, 4, 4, gluon=True), head_dim=head_dim)
    assert report["fits_shared_memory"] and report["tensor_core_instructions"] > 0
    assert report["register_operand_wgmmas"] == report["tensor_core_instructions"]
    # (rel_pos spilled 4 instructions outside the key loop before its bias was added by block as a row and a
    # column vector)
    assert report["matmul_loop_spill_instructions"] == 0 and report["partial_wgmma_waits"] > 0
    assert report["spill_instructions"] == 0
    assert not report["wgmma_serialized"] and report["ptxas_warnings"] == []
    assert ("TANH" in report["special_function_instructions"]) == (spec == "softcap")


@pytest.mark.parametrize("bias", ["by_head[h] * (kv_idx - q_idx)", "table[(q_idx - kv_idx).abs()]"])
def test_the_gluon_kernel_passes_captured_buffers_to_a_score_mod_without_a_mask(tmp_path, bias):
    """A score_mod that reads a captured buffer, with no mask_mod: the dense Gluon kernel hands the buffer down to
    its softmax step (it did not, and failed to compile), whether the bias is added by block (a slope per head) or
    on every score (a table indexed by distance)."""
    spec = tmp_path / "buffered.py"
    spec.write_text("import torch\nby_head = torch.linspace(-1, 1, 16)\ntable = torch.linspace(-1, 1, 16384)\n\n\n"
                    f"def score_mod(score, b, h, q_idx, kv_idx):\n    return score + {bias}\n")
    report = compile_builtin(str(spec), KernelConfig(128, 64, 4, 4, gluon=True, persistent=True), head_dim=128)
    assert report["tensor_core_instructions"] > 0 and report["spill_instructions"] == 0
    assert not report["wgmma_serialized"]


@pytest.mark.parametrize("spec", ["causal", "key_padding", "sliding_window"])
def test_the_gluon_kernel_with_a_block_map_compiles_for_hopper(specs, spec):
    """The mask form (whole key blocks, then cut ones, read from the block map; key_padding reads a captured
    buffer): the same register budget as the dense kernel, no spill, a wgmma kept in flight in both key loops."""
    dense = compile_builtin(str(specs / "noop.py"), KernelConfig(128, 64, 4, 4, gluon=True), head_dim=128)
    report = compile_builtin(str(specs / f"{spec}.py"), KernelConfig(128, 64, 4, 4, gluon=True), head_dim=128)
    assert report["fits_shared_memory"] and report["registers"] == dense["registers"]
    assert report["spill_instructions"] == 0 and not report["wgmma_serialized"]
    assert report["register_operand_wgmmas"] == report["tensor_core_instructions"] > 0
    assert report["partial_wgmma_waits"] == 2 * dense["partial_wgmma_waits"]  # a pipelined loop of each kind


def test_the_report_sizes_each_key_loop_of_a_masked_kernel(specs):
    """Dilated causal compiled with light cut blocks (`q >= kv` left out of them; class by class, as it runs at
    even lengths): each consumer warpgroup has a loop for whole blocks, one for light cut blocks and one for the
    other cut blocks, and each trip is longer by the mask tests it runs (a select a score, and the tests)."""
    report = compile_builtin(str(specs / "dilated_causal.py"), KernelConfig(128, 128, 4, 2, gluon=True),
                             head_dim=128, light=1)
    sizes = report["matmul_loop_instructions"]
    assert len(sizes) == 6  # three loops in each of the two consumer warpgroups' code
    for whole, light, heavy in (sizes[:3], sizes[3:]):
        # two 128-key blocks a trip: 64 scores a thread a block, each masked with a select at least
        assert whole + 2 * 64 <= light < heavy


def test_a_kernel_that_runs_out_of_registers_spills_in_its_matmul_loop(specs):
    """128x128 tiles with one warpgroup (4 warps) need more than 255 registers a thread: the spills land in the key
    loop, where the report counts them (against rel_pos's Gluon kernel above, whose few are outside it)."""
    report = compile_builtin(str(specs / "noop.py"), KernelConfig(128, 128, 4, 3, tma=True), head_dim=128)
    assert report["matmul_loop_spill_instructions"] > 0
    assert report["spill_instructions"] >= report["matmul_loop_spill_instructions"]


def test_a_gluon_kernel_with_128_query_rows_a_warpgroup_is_reported_serialized(specs):
    """Why the Gluon kernel gives each consumer warpgroup 64 query rows: at 128 the matmuls in flight need more
    registers than ptxas can give them, and it waits for every wgmma before issuing the next. The SASS still holds
    its tensor-core instructions; only ptxas's own message, which the report carries, tells."""
    report = compile_builtin(str(specs / "noop.py"), KernelConfig(256, 64, 4, 2, gluon=True), head_dim=128)
    assert report["tensor_core_instructions"] > 0
    assert report["wgmma_serialized"] and report["partial_wgmma_waits"] == 0
    assert any("serialized" in m for m in report["ptxas_warnings"])


def test_a_gluon_kernel_with_128_key_blocks_at_d128_reads_q_from_shared_memory(specs):
    """At 128-key blocks of D=128, Q in registers (32 a thread) left ptxas too few for the scores and it serialized
    every wgmma; read from shared memory, QK^T takes its left operand from there (half the matmuls), nothing
    spills and a wgmma stays in flight. At 64-key blocks, and at D=64, Q stays in registers (the tests above)."""
    report = compile_builtin(str(specs / "noop.py"), KernelConfig(128, 128, 4, 2, gluon=True), head_dim=128)
    assert report["fits_shared_memory"] and report["tensor_core_instructions"] > 0
    assert 2 * report["register_operand_wgmmas"] == report["tensor_core_instructions"]
    assert report["spill_instructions"] == 0 and report["partial_wgmma_waits"] > 0
    assert not report["wgmma_serialized"] and report["ptxas_warnings"] == []
    narrow = compile_builtin(str(specs / "noop.py"), KernelConfig(128, 128, 4, 2, gluon=True), head_dim=64)
    assert narrow["register_operand_wgmmas"] == narrow["tensor_core_instructions"] > 0


def test_exponentials_under_pv_counts_those_between_a_partial_and_a_full_wgmma_wait():
    listing = ["MUFU.EX2 R1, R1 ;",  # before any wait: not under a PV
               "WARPGROUP.DEPBAR.LE gsb0, 0x0 ;",  # a full wait with no partial one before it: no window
               "WARPGROUP.DEPBAR.LE gsb0, 0x1 ;", "FMNMX R2, R2, R3, !PT ;", "MUFU.EX2 R4, R4 ;",
               "@P0 MUFU.EX2 R5, R5 ;", "MUFU.RCP R6, R6 ;", "WARPGROUP.DEPBAR.LE gsb0, 0x0 ;",
               "MUFU.EX2 R7, R7 ;",  # after the PV's wait
               "WARPGROUP.DEPBAR.LE gsb0, 0x1 ;", "WARPGROUP.DEPBAR.LE gsb0, 0x0 ;"]
    assert exponentials_under_pv(listing) == [2, 0]


def test_the_gluon_kernel_reports_how_much_softmax_overlaps_its_own_pv(specs):
    """One window a pipelined block (each partial wait), none holding more than a block's exponentials: BN / 2 a
    thread (64 rows x BN scores over 128 threads) and the two rescale factors."""
    report = compile_builtin(str(specs / "noop.py"), KernelConfig(128, 64, 4, 3, gluon=True), head_dim=128)
    windows = report["exponentials_under_pv"]
    assert len(windows) == report["partial_wgmma_waits"] > 0
    assert all(0 <= n <= 64 // 2 + 2 for n in windows)
    assert sum(windows) < report["special_function_instructions"]["EX2"]


def test_the_listing_is_read_past_address_ffff():
    """Kernels over 4096 instructions (the Gluon ones) have five-digit addresses; a spill there must still count."""
    listing = ("        /*fff0*/                   FMUL R1, R2, R3 ;                /* 0x000fe20000400000 */\n"
               "                                                                    /* 0x000fca0000000f00 */\n"
               "        /*10000*/                  STL [R1], R2 ;                   /* 0x0001e80000100800 */\n")
    assert sass_listing(listing) == [(0xfff0, "FMUL R1, R2, R3 ;"), (0x10000, "STL [R1], R2 ;")]


def test_the_light_loop_is_compiled_only_for_shapes_with_light_blocks(specs):
    """Dilated causal has two conjuncts; the Triton kernel runs its light cut blocks in a loop of their own. Without
    light blocks (LIGHT=0, as for a sliding window's shapes) that loop is not compiled at all: the kernel has the
    matmuls of a one-conjunct mask's (whole blocks, cut blocks); with LIGHT=1 a third loop's worth, whose steps test
    fewer conjuncts than the cut loop's."""
    cfg = KernelConfig(64, 64, 4, 3, tma=True)
    causal = compile_builtin(str(specs / "causal.py"), cfg, head_dim=128)
    dilated = {light: compile_builtin(str(specs / "dilated_causal.py"), cfg, head_dim=128, light=light)
               for light in (0, 1)}
    assert dilated[0]["tensor_core_instructions"] == causal["tensor_core_instructions"]
    assert 2 * dilated[1]["tensor_core_instructions"] == 3 * causal["tensor_core_instructions"]
    assert all(report["spill_instructions"] == 0 for report in dilated.values())


def test_the_gluon_kernel_with_192_query_rows_runs_three_consumer_warpgroups(specs):
    """FlashAttention-4's sm_90 tile at D <= 64 has 192 query rows: three consumer warpgroups of 64 rows, with 160
    registers a thread each (what 65536 leave beside the loader's 32). At 64-key blocks it fits, nothing spills and
    no wgmma is serialized, with half again the exponentials of the 128-row kernel: one more warpgroup's share. Only
    for a spec without a mask_mod: the block map's query blocks are powers of two."""
    rows_192, rows_128 = (compile_builtin(str(specs / "noop.py"), KernelConfig(rows, 64, 4, 3, gluon=True,
                                                                               persistent=True), head_dim=64)
                          for rows in (192, 128))
    assert rows_192["fits_shared_memory"] and rows_192["spill_instructions"] == 0
    assert not rows_192["wgmma_serialized"] and rows_192["partial_wgmma_waits"] > 0
    exponentials = [report["special_function_instructions"]["EX2"] for report in (rows_192, rows_128)]
    assert 2 * exponentials[0] == 3 * exponentials[1]
    causal = load_spec(SpecFiles(str(specs / "causal.py")))
    with pytest.raises(ValueError, match="192-row"):
        render_kernel(causal.name, lower_spec(causal), KernelConfig(192, 64, 4, 3, gluon=True))


def test_a_mask_pairing_query_classes_with_other_key_classes_compiles_as_dilated_causal_does(tmp_path):
    """`(q_idx + kv_idx) % 3 == 1` pairs query class c with key class 1 - c: the Gluon kernel's loader picks that
    class's K and V view head and the consumers index its keys. Compiled class by class for sm_90, it has the
    matmuls and, to within a few instructions, the whole-block loop of the same mask pairing each class with its
    own (`(q_idx - kv_idx) % 3 == 0`); only the cut blocks' loop differs, by their residue test."""
    reports = {}
    for name, test in (("own", "(q_idx - kv_idx) % 3 == 0"), ("paired", "(q_idx + kv_idx) % 3 == 1")):
        path = tmp_path / f"{name}.py"
        path.write_text(f"def mask_mod(b, h, q_idx, kv_idx):\n    return ({test}) & (q_idx >= kv_idx)\n")
        reports[name] = compile_builtin(str(path), KernelConfig(128, 128, 4, 2, gluon=True, persistent=True),
                                        head_dim=128)
    own, paired = reports["own"], reports["paired"]
    assert paired["tensor_core_instructions"] == own["tensor_core_instructions"] > 0
    assert not paired["wgmma_serialized"] and paired["fits_shared_memory"]
    whole_own, whole_paired = own["matmul_loop_instructions"][0], paired["matmul_loop_instructions"][0]
    assert abs(whole_paired - whole_own) <= 0.02 * whole_own


@pytest.mark.parametrize("cfg", [KernelConfig(128, 128, 4, 2, gluon=True, persistent=True),
                                 KernelConfig(128, 64, 8, 3, tma=True)], ids=["gluon", "triton descriptors"])
def test_a_dilated_mask_at_ragged_lengths_compiles_with_two_descriptors_a_tensor(specs, cfg):
    """At lengths 2 does not divide, dilated causal's kernels take each tensor's classes in two descriptors
    (`_class_parts`): the Gluon kernel's loader and stores pick one per copy, a branch the warpgroup takes alike; a
    Triton program picks its class's once, before its key loops (a branch at each load made the pipelined loop
    647 instructions a trip against 499). Compiled for sm_90: the same matmuls as at even lengths (one descriptor a
    tensor), no serialized wgmmas, and key loops no longer than theirs but for a few instructions."""
    spec = str(specs / "dilated_causal.py")
    even, ragged = (compile_builtin(spec, cfg, head_dim=128, even_kv=even) for even in (True, False))
    assert ragged["sass_sha"] != even["sass_sha"]  # the second descriptors are there
    assert ragged["tensor_core_instructions"] == even["tensor_core_instructions"] > 0
    assert not ragged["wgmma_serialized"] and ragged["fits_shared_memory"]
    assert len(ragged["matmul_loop_instructions"]) == len(even["matmul_loop_instructions"])
    for loop_even, loop_ragged in zip(even["matmul_loop_instructions"], ragged["matmul_loop_instructions"]):
        assert loop_ragged <= 1.02 * loop_even


def test_a_persistent_dense_gluon_kernel_reading_q_from_shared_memory_has_a_second_q_slot(specs):
    """At 128-key blocks of D=128 (Q read from shared memory) a persistent program of plain attention keeps two Q
    slots a consumer, so that the loader fills the next tile's a tile ahead of its first QK^T: 32 KB more shared
    memory, within the 232,448 bytes a block may have on an H100, and the key loops as before (no spills, a wgmma
    in flight). One slot a program per tile, with Q in registers, or in a block map's kernel (key padding, where
    two were timed level or slower)."""
    noop = str(specs / "noop.py")
    two = compile_builtin(noop, KernelConfig(128, 128, 4, 2, gluon=True, persistent=True), head_dim=128)
    one = compile_builtin(noop, KernelConfig(128, 128, 4, 2, gluon=True), head_dim=128)
    assert two["fits_shared_memory"] and two["shared_bytes"] - one["shared_bytes"] >= 2 * 128 * 128
    assert two["matmul_loop_spill_instructions"] == 0 and two["partial_wgmma_waits"] > 0
    assert not two["wgmma_serialized"]
    slots = {}
    for spec_name in ("noop", "key_padding"):
        spec = load_spec(SpecFiles(str(specs / f"{spec_name}.py")))
        for label in ("BM128 BN128 w4 s2 gluon persistent", "BM128 BN128 w4 s2 gluon",
                      "BM128 BN64 w4 s4 gluon persistent"):
            with tempfile.TemporaryDirectory() as tmp:
                module = load_module(render_kernel(spec.name, lower_spec(spec), KernelConfig.from_label(label)),
                                     Path(tmp))
                slots[spec_name, label] = (module._q_slots(128, None, SHARED_LIMIT),
                                           module._q_slots(64, None, SHARED_LIMIT))
    assert slots == {("noop", "BM128 BN128 w4 s2 gluon persistent"): (2, 1),
                     ("noop", "BM128 BN128 w4 s2 gluon"): (1, 1),
                     ("noop", "BM128 BN64 w4 s4 gluon persistent"): (1, 1),
                     ("key_padding", "BM128 BN128 w4 s2 gluon persistent"): (1, 1),
                     ("key_padding", "BM128 BN128 w4 s2 gluon"): (1, 1),
                     ("key_padding", "BM128 BN64 w4 s4 gluon persistent"): (1, 1)}
