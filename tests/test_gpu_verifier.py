"""The verifier on a CUDA GPU: timing, and the checks only a GPU can make (side streams, implausible speed,
launch counts, score-sized allocations, illegal memory access). Skipped without CUDA."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.bench import load_module
from kernels import builtin_source, flash_source, gluon_source, kernel_file
from verifier.problem import Problem, Shape
from verifier.spec import SpecFiles
from verifier.verify import Verifier, VerifyOptions

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TARGET = Shape(2, 8, 8, 1024, 1024, 64)


@pytest.fixture(scope="session")
def gpu_verifier(specs):
    built: dict[tuple, Verifier] = {}

    def get(spec: str = "noop", shape: Shape = TARGET, baseline: bool = False,
            require_single_kernel: bool = False) -> Verifier:
        key = (spec, shape, baseline, require_single_kernel)
        if key not in built:
            problem = Problem(SpecFiles(str(specs / f"{spec}.py")), shape, "bf16", "cuda")
            options = VerifyOptions(baseline=baseline, require_single_kernel=require_single_kernel)
            built[key] = Verifier(problem, options)
        return built[key]

    return get


def reason(verdict) -> tuple[str | None, str | None]:
    return verdict.reason, verdict.failed_stage.stage if verdict.failed_stage else None


@pytest.mark.parametrize("spec, score, mask", [("noop", None, None), ("causal", None, "causal"),
                                               ("key_padding", None, "key_padding"), ("alibi", "alibi", None)])
def test_good_kernel_is_accepted_and_timed(gpu_verifier, spec, score, mask):
    shape = Shape(8, 4, 4, 1024, 1024, 64) if spec == "key_padding" else TARGET
    verdict = gpu_verifier(spec, shape, require_single_kernel=True).verify(flash_source(score, mask, bm=64, bn=64))
    assert verdict.accepted, f"{verdict.reason}: {verdict.message}"
    assert [s.stage for s in verdict.stages] == ["static", "run", "integrity", "numerics", "gpu integrity",
                                                 "timed outputs", "timing"]
    m = verdict.metrics
    assert m.ms > 0 and m.tflops > 0 and m.launches_per_call == 1 and m.launch_names[0].startswith("_attn_fwd")
    assert m.extra_memory_bytes < shape.batch * shape.heads * shape.seq_len * shape.head_dim * 2  # < the output
    [kernel] = [k for k in m.compiled if k["name"] == "_attn_fwd"]  # the compiler report, as loaded on the GPU
    assert 0 < kernel["registers"] <= 255 and kernel["spills"] >= 0 and kernel["shared_bytes"] > 0
    assert kernel["variants"] >= 2  # the suite's ragged and whole key lengths, fp16 as well as bf16
    past = [t for t in verdict.stages[3].details["trials"] if "past the index limits" in t["purpose"]]
    assert len(past) == 1 and past[0]["ok"]  # right at the heads either side of 65535 and of 2**31 elements


@pytest.mark.parametrize("variant", ["heads_on_axis_1", "int32_offsets"])
def test_a_kernel_that_fails_past_the_index_limits_is_rejected_on_that_trial_alone(gpu_verifier, variant):
    """Batch x heads on the grid's second axis (at most 65535 programs), or batch and head offsets in 32 bits:
    right at every target-sized trial, wrong past the limits."""
    v = gpu_verifier()
    [past] = [t for t in v.suite if t.sample]
    verdict = v.verify(flash_source(variant=variant, bm=64, bn=64))
    assert not verdict.accepted
    stage = verdict.failed_stage
    if stage.stage == "numerics":
        failed = [t["trial"] for t in stage.details["trials"] if not t["ok"]]
        assert failed == [past.id], verdict.message
    elif stage.stage == "integrity":  # wrapped stores land in other memory: on the H200, q's (input_mutated)
        assert all(f["message"].startswith(f"{past.id}:") for f in stage.details["findings"]), verdict.message
    else:  # the launch refused, or the wrapped offsets fault
        assert stage.stage == "run" and f"'{past.id} (past the index limits" in verdict.message, verdict.message


def test_the_report_counts_spilled_registers(gpu_verifier):
    """128x128 tiles with 4 warps at D=128 cannot fit 255 registers a thread: the fp32 output tile alone takes 128
    of them, the fp32 score tile 128 more. The kernel is correct and accepted, and the compiler report says how much
    spilled. (At D=64, on the H100 in 2026-12, the GPU's ptxas fitted this kernel in 255 registers with no local
    memory, where the CPU's sm_90 compile had spilled: the test was moved to D=128.)"""
    verdict = gpu_verifier("noop", Shape(2, 8, 8, 1024, 1024, 128)).verify(flash_source(bm=128, bn=128))
    assert verdict.accepted, f"{verdict.reason}: {verdict.message}"
    [kernel] = [k for k in verdict.metrics.compiled if k["name"] == "_attn_fwd"]
    assert kernel["registers"] == 255 and kernel["spills"] > 0


def test_good_kernel_is_accepted_every_time(gpu_verifier):
    v = gpu_verifier("causal")
    for _ in range(3):
        verdict = v.verify(flash_source(mask="causal", bm=64, bn=64))
        assert verdict.accepted, f"{verdict.reason}: {verdict.message}"


def test_illegal_memory_access_is_a_crash(gpu_verifier):
    source = flash_source().replace("q = tl.load(Q + b", "q = tl.load(Q + 10**12 + b")
    assert reason(gpu_verifier().verify(source)) == ("crash", "run")


def test_side_stream(gpu_verifier):
    assert reason(gpu_verifier().verify(kernel_file("side_stream.py"))) == ("side_stream", "gpu integrity")


def test_work_hidden_from_the_profiler_and_the_events_is_caught_by_the_wall_clock(gpu_verifier):
    """A kernel on a private stream except while a profiler watches: the profiled calls are clean, so the wall
    clock is what catches it (its control pass removes only what a trusted kernel of the events' length waited).
    A shape where the hidden work is well past the check's 0.25 ms of slack a call."""
    verdict = gpu_verifier("noop", Shape(2, 8, 8, 4096, 4096, 64)).verify(kernel_file("side_stream_unprofiled.py"))
    assert reason(verdict) == ("side_stream", "timing"), verdict.message
    timing = verdict.failed_stage.details["timing"]
    assert timing["wall_ms"] > 1.5 * timing["ms"] + 0.25


def test_multiple_kernels_only_when_a_single_kernel_is_required(gpu_verifier):
    source = kernel_file("two_launches.py")
    assert reason(gpu_verifier(require_single_kernel=True).verify(source)) == ("multiple_kernels", "gpu integrity")
    verdict = gpu_verifier().verify(source)
    assert verdict.accepted and verdict.metrics.launches_per_call == 2


def test_materialized_scores(gpu_verifier):
    assert reason(gpu_verifier().verify(kernel_file("materializes_scores.py"))) == ("materialized_scores", "integrity")


def test_library_math_on_the_gpu(gpu_verifier):
    assert reason(gpu_verifier().verify(kernel_file("getattr_bmm.py"))) == ("forbidden_call", "integrity")


def test_cached_output_on_the_gpu(gpu_verifier):
    assert reason(gpu_verifier().verify(kernel_file("cached_output.py"))) == ("cached_output", "numerics")


def test_replaying_a_held_output_while_timed(gpu_verifier):
    """Identity-keyed replay returns the very output object the caller still holds."""
    verdict = gpu_verifier().verify(kernel_file("replays_output.py"))
    assert reason(verdict) == ("output_aliases_input", "gpu integrity"), verdict.message


def test_replaying_a_copy_while_timed(gpu_verifier):
    """Identity-keyed replay into a fresh output: the timed inputs change values between calls, so it is stale."""
    verdict = gpu_verifier().verify(kernel_file("replays_by_copy.py"))
    assert reason(verdict) == ("cached_output", "timed outputs"), verdict.message


@pytest.mark.slow
def test_honest_timing_is_below_the_measured_peak(gpu_verifier):
    """With the baseline measured, an honest kernel's rate is below the GPU's matmul peak (implausible_speed's
    threshold; the code itself is exercised by tests/test_cheats.py on hand-made records)."""
    verdict = gpu_verifier(baseline=True).verify(flash_source(None, None, bm=64, bn=64))
    assert verdict.accepted, verdict.message
    assert 0 < verdict.metrics.tflops < verdict.metrics.peak_tflops and verdict.metrics.ratio_to_flex


def test_a_verification_waits_for_the_gpus_turn_another_holds_on_its_own_turn_file(gpu_verifier):
    """The GPU's own turn file (named by its UUID): a holder with its own lock, as another process's verification
    has, keeps this verification waiting until it lets go, which it does a second after the verification says it
    waits. Accepted, and the report names the wait."""
    import threading
    import time

    from verifier.gpu_turns import Turns, lock_path
    verifier = gpu_verifier()
    held, seen = threading.Event(), []

    def hold():
        with Turns(lock_path("cuda")).take("a test holding the turn"):
            held.set()
            deadline = time.monotonic() + 600
            while verifier.waiting_for_turn() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            seen.append(verifier.waiting_for_turn())
            time.sleep(1.0)
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(60)
    verdict = verifier.verify(flash_source(None, None, bm=64, bn=64))
    holder.join(60)
    assert verdict.accepted, verdict.message
    assert seen[0] is not None and any(n.startswith("waited for the GPU's turn") and seen[0] in n
                                       for n in verdict.notes)


@pytest.mark.slow
def test_a_baseline_timed_without_the_gpus_turn_is_said_and_not_cached(specs, tmp_path, monkeypatch):
    """Another process holds the GPU's turn past the baseline's wait: the baseline goes ahead without it (its times
    and matmul peak may include the other's work), the verdict's notes say so, and it is not cached for the next
    run to trust."""
    from test_gpu_turns import held_elsewhere

    from verifier.baseline import cache_dir
    from verifier.gpu_turns import lock_path
    monkeypatch.setenv("KGEN_CACHE_DIR", str(tmp_path / "cache"))
    problem = Problem(SpecFiles(str(specs / "noop.py")), Shape(1, 2, 2, 256, 256, 64), "bf16", "cuda")
    verifier = Verifier(problem, VerifyOptions(baseline=True))
    verifier.turns.wait_s = 2.0
    with held_elsewhere(Path(lock_path("cuda"))):
        verdict = verifier.verify(flash_source(None, None, bm=64, bn=64))
    assert verdict.accepted, verdict.message  # the holder runs nothing on the GPU
    # the candidate's own timing went ahead without its turn too: the baseline's is the one asserted here
    assert any("timing the baseline's flex (default)" in n and "went ahead without it" in n for n in verdict.notes)
    assert verifier.measured_baseline.flex_ms and not verifier.measured_baseline.timed_alone
    assert not list(cache_dir().glob("*.json"))


hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                            reason="a Hopper kernel (wgmma, TMA)")


@hopper
@pytest.mark.parametrize("spec, persistent", [("noop", False), ("softcap", False), ("noop", True), ("causal", True),
                                              ("key_padding", False), ("dilated_causal", True)])
def test_the_builtin_gluon_kernel_is_verified_like_any_other(gpu_verifier, specs, spec, persistent):
    """The warp-specialized Gluon kernel (agent/builtin/gluon.py.j2), with a program per tile or one per SM, dense
    or reading a block map (a mask; a captured buffer): every trial, one launch, timed. The persistent cases run
    512 query tiles at their target shape, several a program on any GPU of up to 256 SMs, so the loop over tiles
    is exercised."""
    source = gluon_source(str(specs / f"{spec}.py"), persistent=persistent)
    shape = Shape(2, 16, 16, 2048, 2048, 128) if persistent else TARGET
    verdict = gpu_verifier(spec, shape=shape, require_single_kernel=True).verify(source)
    assert_a_verified_gluon_kernel(verdict)


@hopper
@pytest.mark.parametrize("spec, persistent, stages",
                         [("noop", True, 2), ("causal", True, 3), ("key_padding", False, 3)])
def test_the_gluon_kernel_at_d64_with_128_key_blocks_takes_each_row_max_in_two_chains(gpu_verifier, specs, spec,
                                                                                        persistent, stages):
    """At D=64 with 128-key blocks (the configs the search picked there in the benchmark) the consumers take each
    row's max as two independent chains (`_row_max_in_chains`), a layout-changing reshape of the scores: every
    trial, dense and masked, one launch. Masks spill a little at this size, outside the key loop. (The dense kernel
    at 3 stages spills 5 instructions in the key loop of its ragged-length variant, with or without the split.)"""
    source = gluon_source(str(specs / f"{spec}.py"), stages=stages, persistent=persistent, block_n=128)
    verdict = gpu_verifier(spec, shape=TARGET, require_single_kernel=True).verify(source)
    kernel = a_single_gluon_launch(verdict)
    assert kernel["loop_spill_instructions"] == 0


@hopper
@pytest.mark.parametrize("spec, persistent", [("noop", True), ("alibi", False), ("softcap", True)])
def test_the_gluon_kernel_with_192_query_rows_is_verified(gpu_verifier, specs, spec, persistent):
    """192-row query tiles (three consumer warpgroups of 64 rows; FlashAttention-4's sm_90 tile at D<=64, for specs
    without a mask_mod): every trial, query lengths 192 does not divide among them, one launch of 16 warps, no
    serialized wgmma, no spills in the key loop. At the target shape the persistent kernel runs 352 query tiles,
    several a program. (The ragged-length variant spills a few registers outside the key loop: 6 instructions for
    noop and softcap compiled for sm_90 on the CPU.)"""
    source = gluon_source(str(specs / f"{spec}.py"), stages=3, persistent=persistent, block_m=192)
    verdict = gpu_verifier(spec, shape=Shape(2, 16, 16, 2048, 2048, 64), require_single_kernel=True).verify(source)
    kernel = a_single_gluon_launch(verdict, consumers=3)
    assert kernel["loop_spill_instructions"] == 0


MASKS_FOR_GLUON = {
    # query tiles of 128 rows with no key at all: the loader skips them, their consumers write zeros
    "late": "def mask_mod(b, h, q_idx, kv_idx):\n    return q_idx >= kv_idx + 300\n",
    # a block map row per batch element and head
    "per_head": "def mask_mod(b, h, q_idx, kv_idx):\n"
                "    return (kv_idx <= q_idx + 64 * h) & (kv_idx >= q_idx - 200 * (b + 1))\n",
    # a causal window narrower than a query tile: each consumer skips blocks at both ends of the tile's
    "narrow_window": "def mask_mod(b, h, q_idx, kv_idx):\n"
                     "    return (q_idx >= kv_idx) & (q_idx - kv_idx < 100)\n",
    # keys in the query's residue class mod 3 only, with a bound per batch element and head: run class by class
    "classes": "def mask_mod(b, h, q_idx, kv_idx):\n"
               "    return ((kv_idx - q_idx) % 3 == 0) & (kv_idx <= q_idx + 64 * h + 100 * b)\n",
    # four classes, written as equal remainders, with a causal bound
    "classes_mod4": "def mask_mod(b, h, q_idx, kv_idx):\n"
                    "    return (q_idx % 4 == kv_idx % 4) & (q_idx >= kv_idx)\n",
    # query class c keeps key class 1 - c mod 3 (a sum), with a bound per batch element and head
    "paired_classes": "def mask_mod(b, h, q_idx, kv_idx):\n"
                      "    return ((q_idx + kv_idx) % 3 == 1) & (kv_idx <= q_idx + 64 * h + 100 * b)\n",
}


@hopper
@pytest.mark.parametrize("spec, persistent", [("softcap", False), ("noop", True), ("late", True)])
def test_the_gluon_kernel_with_128_key_blocks_reads_q_from_shared_memory(gpu_verifier, specs, tmp_path, spec,
                                                                         persistent):
    """At 128-key blocks of D=128 Q stays in shared memory until the tile's last QK^T, and its buffer goes back to
    the loader with the release of the tile's last K: with a program per tile, with several tiles a program (the
    next tile's Q loads while the last block's softmax and PV run), and with a mask that empties tiles (the loader
    waits on the last tile it loaded; GQA, ragged lengths). Masks spill a little at this size, outside the key
    loop; it must still be right."""
    if spec in MASKS_FOR_GLUON:
        path, verifier = mask_for_gluon(tmp_path, spec)
    else:
        path = specs / f"{spec}.py"
        verifier = gpu_verifier(spec, shape=Shape(2, 16, 16, 2048, 2048, 128), require_single_kernel=True)
    a_single_gluon_launch(verifier.verify(gluon_source(str(path), stages=2, persistent=persistent, block_n=128)))


@hopper
@pytest.mark.parametrize("name, persistent", [("late", True), ("per_head", False)])
def test_the_gluon_kernel_with_masks_that_empty_tiles_or_differ_per_head(tmp_path, name, persistent):
    path, verifier = mask_for_gluon(tmp_path, name)
    assert_a_verified_gluon_kernel(verifier.verify(gluon_source(str(path), persistent=persistent)))


@hopper
@pytest.mark.parametrize("name, persistent", [("sliding_window", True), ("sliding_window", False),
                                              ("narrow_window", True), ("narrow_window", False)])
def test_the_gluon_consumers_skip_the_key_blocks_their_rows_keep_none_of(gpu_verifier, specs, tmp_path, name,
                                                                          persistent):
    """A 256-key window (the shared spec) or a 100-key one, in 64-key blocks: each 128-row tile has cut blocks
    that only one consumer's 64 rows keep, listed first and last; the other consumer gives their stages back
    unread. Every trial (GQA, ragged lengths) must be right, with a program per tile and with several a program."""
    if name in MASKS_FOR_GLUON:
        path, verifier = mask_for_gluon(tmp_path, name)
    else:
        path = specs / f"{name}.py"
        verifier = gpu_verifier(name, shape=Shape(2, 16, 16, 2048, 2048, 128), require_single_kernel=True)
    assert_a_verified_gluon_kernel(verifier.verify(gluon_source(str(path), persistent=persistent)))


@hopper
@pytest.mark.parametrize("name, block_n, stages", [("classes", 128, 2), ("classes", 64, 3), ("classes_mod4", 64, 3),
                                                   ("paired_classes", 128, 2)])
def test_the_gluon_kernel_runs_the_residue_classes_of_a_dilated_mask_apart(tmp_path, name, block_n, stages):
    """A mask that keeps keys in the query's class mod 3 and reads the batch and the head (or one mod 4, written
    as equal remainders, or one that pairs query class c with key class 1 - c mod 3): at the target lengths
    (multiples of P, as many K heads as Q heads) the kernel runs each class on strided views and maps the indices
    back for mask_mod; the verifier's ragged trials run the classes apart too, in two descriptors a tensor. Both
    must be right."""
    path = tmp_path / f"{name}.py"
    path.write_text(MASKS_FOR_GLUON[name])
    problem = Problem(SpecFiles(mask_path=str(path)), Shape(2, 4, 4, 768, 1536, 128), "bf16", "cuda")
    verifier = Verifier(problem, VerifyOptions(baseline=False, require_single_kernel=True))
    source = gluon_source(str(path), stages=stages, persistent=True, block_n=block_n)
    assert "_residue_views" in source
    verdict = verifier.verify(source)
    kernel = a_single_gluon_launch(verdict)
    # (masks spill a little at 128-key blocks, outside the key loop: 28 on the H200 in this test)
    assert block_n == 128 or kernel["spills"] == 0


@pytest.mark.parametrize("name", ["classes", "paired_classes"])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("config", ["BM128 BN64 w8 s3", pytest.param("BM64 BN128 w4 s2 tma", marks=hopper)])
def test_the_triton_kernel_runs_the_residue_classes_of_a_dilated_mask_apart(tmp_path, config, kv_heads, name):
    """The Triton template's class-by-class path (what GPUs without Gluon run, and what the search times beside
    Gluon on Hopper), with pointer loads and with tensor descriptors on the strided views, with as many K heads as
    Q heads and with GQA (a Q view batch reads its K head's view): the mask mod 3 with a bound per batch element and
    head (keys in the query's own class, or in class 1 - c), at the target lengths (multiples of 3) and the
    verifier's ragged ones, where they run the classes apart too (pointer loads reach the longer classes' last row
    past the views; descriptors take each tensor's classes in two parts).
    The pointer config keeps every register. The descriptor one's compile report counted 2 spills on the H200, in
    one of its variants (the sm_90 compile of its class variant on the CPU has none)."""
    path = tmp_path / f"{name}.py"
    path.write_text(MASKS_FOR_GLUON[name])
    problem = Problem(SpecFiles(mask_path=str(path)), Shape(2, 4, kv_heads, 768, 1536, 128), "bf16", "cuda")
    verifier = Verifier(problem, VerifyOptions(baseline=False, require_single_kernel=True))
    source = builtin_source(str(path), config)
    assert "_residue_views" in source and "gluon" not in source
    verdict = verifier.verify(source)
    assert verdict.accepted, f"{verdict.reason}: {verdict.message}"
    m = verdict.metrics
    assert m.ms > 0 and m.launches_per_call == 1 and m.launch_names[0].startswith("_attn_fwd")
    [kernel] = [k for k in m.compiled if k["name"] == "_attn_fwd"]
    assert kernel["spills"] == 0 or "tma" in config


DILATED_ALIBI = """import torch

SLOPES = torch.exp2(-torch.arange(1, 9, dtype=torch.float32))


def score_mod(score, b, h, q_idx, kv_idx):
    return score + SLOPES[h] * (kv_idx - q_idx)


def mask_mod(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & ((q_idx - kv_idx) % 2 == 0)
"""


@hopper
@pytest.mark.parametrize("kv_heads", [8, 2])
def test_a_dilated_mask_with_a_score_mod_reading_a_buffer_runs_class_by_class(tmp_path, kv_heads):
    """Dilated causal with ALiBi slopes read from a captured buffer by head, with as many K heads as Q heads and
    with GQA: the kernel runs the two residue classes apart (with GQA each Q view batch reads its K head's view),
    and score_mod must see the spec's indices (the bias is on the true distance, the slope on the true head)."""
    path = tmp_path / "alibi_dilated.py"
    path.write_text(DILATED_ALIBI)
    shape = Shape(2, 8, kv_heads, 1024, 2048, 128)
    verifier = Verifier(Problem(SpecFiles(str(path)), shape, "bf16", "cuda"),
                        VerifyOptions(baseline=False, require_single_kernel=True))
    source = gluon_source(str(path), stages=3, persistent=True)
    assert "_residue_views" in source
    assert_a_verified_gluon_kernel(verifier.verify(source))
    # at the target the classes ran apart: the block maps the kernel built are those of P = 2
    module = load_module(source, tmp_path)
    q, k, v = (torch.randn(*s, device="cuda", dtype=torch.bfloat16) for s in (shape.q_shape, shape.kv_shape,
                                                                              shape.kv_shape))
    module.attention(q, k, v, SLOPES=torch.exp2(-torch.arange(1, 9, dtype=torch.float32, device="cuda")))
    assert {key[5] for key in module._BLOCK_MAPS} == {2}


@hopper
@pytest.mark.parametrize("name", ["classes", "paired_classes"])
@pytest.mark.parametrize("config", ["BM128 BN128 w4 s2 gluon persistent", "BM64 BN128 w4 s2 tma"])
def test_the_descriptor_kernels_run_ragged_lengths_class_by_class(tmp_path, name, config):
    """At lengths 3 does not divide, the Gluon kernel and the Triton kernel with tensor descriptors run the mask
    mod 3 class by class too: each tensor's classes in two descriptors (the longer classes' and the others',
    `_class_parts`; a Triton program picks its class's before its loops). Q's length, K's, or both ragged, with as
    many K heads as Q heads and with GQA; the block maps are those of P = 3 and every output agrees with the
    float64 reference."""
    from verifier.reference import exact
    from verifier.spec import load_spec

    path = tmp_path / f"{name}.py"
    path.write_text(MASKS_FOR_GLUON[name])
    module = load_module(builtin_source(str(path), config), tmp_path)
    assert "_class_parts" in module.__dict__
    spec = load_spec(SpecFiles(mask_path=str(path)))
    for HK, SQ, SKV in ((4, 767, 1535), (2, 768, 1537), (4, 1000, 1536), (2, 1001, 1001)):
        module._BLOCK_MAPS.clear()
        q = torch.randn(2, 4, SQ, 128, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(2, HK, SKV, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        o = module.attention(q, k, v)
        expected = exact(q.cpu(), k.cpu(), v.cpu(), spec, None, Shape(2, 4, HK, SQ, SKV, 128))
        assert (o.cpu().double() - expected).abs().max().item() < 2e-2, (HK, SQ, SKV)
        assert {key[5] for key in module._BLOCK_MAPS} == {3}, (HK, SQ, SKV)


@hopper
@pytest.mark.parametrize("config", ["BM64 BN128 w4 s2 tma", "BM128 BN128 w4 s3 gluon persistent"])
@pytest.mark.parametrize("layout", ["misaligned", "transposed", "fused heads"])
def test_the_descriptor_kernels_on_the_layouts_models_hand_over(specs, tmp_path, config, layout):
    """The built-in descriptor and Gluon kernels read a model's transposed projection and a fused projection's
    heads in place (the descriptors take the strides), and copy an input that starts off a 16-byte boundary (the
    copy engine refuses it; t.contiguous() would hand it back as it is). Causal at a ragged length, against the
    float64 reference."""
    from verifier.reference import exact
    from verifier.spec import load_spec

    path = specs / "causal.py"
    module = load_module(builtin_source(str(path), config), tmp_path)
    B, H, S, D = 2, 8, 1000, 64

    def laid_out():
        if layout == "misaligned":
            return torch.randn(1 + B * H * S * D, device="cuda", dtype=torch.bfloat16)[1:].view(B, H, S, D)
        if layout == "transposed":
            return torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        return torch.randn(B, S, 3 * H, D, device="cuda", dtype=torch.bfloat16)[:, :, H:2 * H].transpose(1, 2)

    q, k, v = laid_out(), laid_out(), laid_out()
    assert (module._copy_engine_ready(q) is q) == (layout != "misaligned")
    o = module.attention(q, k, v)
    expected = exact(q, k, v, load_spec(SpecFiles(mask_path=str(path))), None, Shape(B, H, H, S, S, D))
    assert (o.double() - expected).abs().max().item() < 2e-2


@pytest.mark.parametrize("config", ["BM64 BN64 w4 s3", pytest.param("BM64 BN128 w4 s2 tma", marks=hopper)])
@pytest.mark.parametrize("spec", ["noop", "causal"])
def test_the_triton_kernel_on_a_decode_batch_of_more_than_65535_heads(specs, tmp_path, config, spec):
    """B * H = 66560 (a decode batch of 1040 with 64 heads): more programs than a grid's second axis takes. The
    kernel launches one axis; one query over 200 keys, against the float64 reference."""
    from verifier.reference import exact
    from verifier.spec import load_spec

    path = specs / f"{spec}.py"
    module = load_module(builtin_source(str(path), config), tmp_path)
    shape = Shape(1040, 64, 64, 1, 200, 64)
    q, k, v = (torch.randn(*s, device="cuda", dtype=torch.bfloat16) for s in (shape.q_shape, shape.kv_shape,
                                                                              shape.kv_shape))
    o = module.attention(q, k, v)
    expected = exact(q, k, v, load_spec(SpecFiles(str(path))), None, shape)
    assert (o.double() - expected).abs().max().item() < 2e-2


def test_the_pointer_kernel_reaches_batch_elements_past_2_to_the_31_elements(specs, tmp_path):
    """Three batch elements 2**30 + 64 elements apart in one buffer (4 GiB): the third starts past 2**31, where
    32-bit offsets wrap. The pointer kernel's batch and head offsets are 64-bit."""
    from verifier.reference import exact
    from verifier.spec import load_spec

    path = specs / "causal.py"
    module = load_module(builtin_source(str(path), "BM64 BN64 w4 s3"), tmp_path)
    B, H, S, D = 3, 2, 256, 64
    far = 2**30 + 64
    memory = torch.empty((B - 1) * far + 3 * H * S * D, device="cuda", dtype=torch.bfloat16)
    q, k, v = (memory.as_strided((B, H, S, D), (far, S * D, D, 1), i * H * S * D) for i in range(3))
    for t in (q, k, v):
        t.copy_(torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16))
    o = module.attention(q, k, v)
    expected = exact(q, k, v, load_spec(SpecFiles(str(path))), None, Shape(B, H, H, S, S, D))
    assert (o.double() - expected).abs().max().item() < 2e-2


def mask_for_gluon(tmp_path, name: str):
    """One of MASKS_FOR_GLUON written as a spec file, and a verifier for it on a GQA shape with ragged lengths."""
    path = tmp_path / f"{name}.py"
    path.write_text(MASKS_FOR_GLUON[name])
    problem = Problem(SpecFiles(mask_path=str(path)), Shape(2, 8, 2, 1000, 1500, 128), "bf16", "cuda")
    return path, Verifier(problem, VerifyOptions(baseline=False, require_single_kernel=True))


def a_single_gluon_launch(verdict, consumers: int = 2) -> dict:
    """The compile facts of the accepted Gluon kernel, asserting it ran as one launch of the loader's warpgroup and
    `consumers` consumer warpgroups (4 warps each) with no serialized wgmmas."""
    assert verdict.accepted, f"{verdict.reason}: {verdict.message}"
    assert verdict.metrics.launches_per_call == 1
    [kernel] = [k for k in verdict.metrics.compiled if k["name"] == "_attn_fwd"]
    assert kernel["num_warps"] == 4 * (1 + consumers) and kernel["wgmma_serialized"] is False
    return kernel


def assert_a_verified_gluon_kernel(verdict) -> None:
    kernel = a_single_gluon_launch(verdict)
    m = verdict.metrics
    assert m.ms > 0 and m.launch_names[0].startswith("_attn_fwd")
    assert kernel["spills"] == 0


def test_queued_timing_leaves_out_the_hosts_launch_gaps():
    """A call that spends 2 ms on the host before a short kernel reads over 2 ms timed call by call (by time_calls
    and by time_queued's first burst), and the kernel's own time queued behind the spin (the benchmark's host-bound
    listing rests on this)."""
    import time

    from verifier import timing

    a = torch.randn(1024, 1024, device="cuda")

    def slow_host(i):
        time.sleep(0.002)
        return a @ a

    called = timing.time_calls(slow_host, 1, target_s=0.05, wall=False).ms
    queued = timing.time_queued(slow_host, 1, calls=10)
    assert called > 2.0
    assert queued is not None and queued.one_by_one_ms > 2.0 and queued.queued_ms < 1.0
    assert queued.host_bound_by > 1.0
