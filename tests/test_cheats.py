"""The cheating kernels in tests/kernels/: each must be rejected with its own reason code (issue 4), on CPU.

A cheat the static scan misses must be caught at run time, by the stage named here. CUDA-only checks
(side_stream at run time, implausible_speed, multiple_kernels, profiler-seen library kernels) are tested
here through the functions that judge their records, and for real in test_gpu_verifier.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kernels import kernel_file
from verifier import guards, probes, timing
from verifier.baseline import Baseline
from verifier.child import bad_output_reason
from verifier.problem import Shape
from verifier.profile import summarize
from verifier.static import check_source
from verifier.suite import RotatingInputs, Trial, make_inputs
from verifier.verdict import REASONS, Metrics
from verifier.verify import timing_stage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from wall_clock_under_load import judge  # noqa: E402

CHEATS = [  # fixture file, reason code, the stage that must catch it
    ("cached_output.py", "cached_output", "numerics"),
    ("input_mutated.py", "input_mutated", "integrity"),
    ("output_is_q.py", "output_aliases_input", "integrity"),
    ("host_matmul.py", "forbidden_call", "static"),
    ("getattr_bmm.py", "forbidden_call", "integrity"),
    ("torch_math.py", "forbidden_call", "integrity"),
    ("oob_write.py", "out_of_bounds_write", "integrity"),
    ("skips_last_block.py", "uninitialized_output", "integrity"),
    ("fp32_output.py", "bad_output", "integrity"),
    ("patch_synchronize.py", "tampering", "static"),
    ("patch_module_dict.py", "tampering", "integrity"),
    ("leaves_thread.py", "tampering", "integrity"),
    ("imports_gc.py", "snooping", "static"),
    ("opens_file.py", "snooping", "run"),  # refused by the audit hook at the call itself
    ("noisy_calls.py", "nondeterministic", "numerics"),
]


@pytest.mark.parametrize("name, reason, stage", CHEATS, ids=[c[0].removesuffix(".py") for c in CHEATS])
def test_cheat_is_rejected(verifier, name, reason, stage):
    source = kernel_file(name)
    assert source.startswith(f"# Cheat (must be rejected with {reason}")
    verdict = verifier("noop").verify(source)
    assert not verdict.accepted
    assert (verdict.reason, verdict.failed_stage.stage) == (reason, stage), verdict.message
    assert verdict.message


def test_the_honest_version_of_the_cheats_is_accepted(verifier):
    """The cheats share one kernel; without the cheat it is correct, so the rejections are about the cheats."""
    honest = kernel_file("oob_write.py").replace("mask=rows[:, None] <= SQ)", "mask=rows[:, None] < SQ)")
    assert verifier("noop").verify(honest).accepted


def test_a_kernel_fitted_to_one_seeds_inputs_passes_that_seed_and_fails_a_fresh_one(verifier):
    """Why the verifier's inputs are drawn afresh: a kernel right only on the values it was shown passes a suite
    of those values, and is wrong at the first trial of any other seed."""
    from verifier.verify import Verifier

    fixed = verifier("noop")  # the tests' fixed seed
    seen = {tuple(make_inputs(t, torch.float16, "cpu")[0][0, 0, 0, :4].tolist()) for t in fixed.suite}
    source = kernel_file("fitted_to_inputs.py").replace("SEEN = set()", f"SEEN = {seen!r}")
    shown = fixed.verify(source)
    assert shown.accepted, f"{shown.reason}: {shown.message}"
    assert shown.seed == 1000
    fresh = Verifier(fixed.problem)  # as a user's: a new seed for every verification
    verdicts = [fresh.verify(source) for _ in range(2)]
    for verdict in verdicts:
        assert (verdict.reason, verdict.failed_stage.stage) == ("wrong_output", "numerics"), verdict.message
        assert "First: t00 target " in verdict.message
        assert f"inputs drawn from seed {verdict.seed} (--seed {verdict.seed} draws" in " ".join(verdict.notes)
    assert len({1000, verdicts[0].seed, verdicts[1].seed}) == 3


def test_materialized_scores_on_cpu(verifier):
    """The threshold follows the capped CPU target, so a 512-long target still catches a 128 x 128 score matrix."""
    verdict = verifier("noop", shape=Shape(1, 2, 2, 512, 512, 16)).verify(kernel_file("materializes_scores.py"))
    assert (verdict.reason, verdict.failed_stage.stage) == ("materialized_scores", "integrity"), verdict.message


def test_dynamic_cheats_really_pass_the_static_scan():
    for name, _, stage in CHEATS:
        if stage != "static":
            assert check_source(kernel_file(name))[0].ok, name


# ------------------------------------------------------------------ the judges of CUDA-only observations
class Tensorish:
    """Something returned instead of a tensor."""


def test_bad_output_reasons():
    q = torch.zeros(2, 2, 8, 16, dtype=torch.float16)

    class Sub(torch.Tensor):
        pass

    assert bad_output_reason(torch.zeros_like(q), q) is None
    assert "float32" in bad_output_reason(q.float(), q)
    assert "shape (2, 2, 16, 8)" in bad_output_reason(q.transpose(2, 3).contiguous(), q)
    odd = q.transpose(2, 3).contiguous().transpose(2, 3)  # right shape, laid out neither way
    assert "neither contiguous nor laid out as torch.empty_like(q)" in bad_output_reason(odd, q)
    transposed = torch.zeros(2, 8, 2, 16, dtype=torch.float16).transpose(1, 2)  # q as a model's projection makes it
    assert bad_output_reason(torch.empty_like(transposed), transposed) is None  # o laid out like q
    assert bad_output_reason(torch.empty(transposed.shape, dtype=torch.float16), transposed) is None  # contiguous
    # q among more heads of a fused projection: empty_like(q) gives dense strides in q's order, not q's own
    fused = torch.zeros(2, 8, 4, 16, dtype=torch.float16)[:, :, 1:3].transpose(1, 2)
    assert torch.empty_like(fused).stride() != fused.stride()
    assert bad_output_reason(torch.empty_like(fused), fused) is None
    assert "neither contiguous" in bad_output_reason(torch.empty_like(fused).transpose(2, 3).contiguous()
                                                     .transpose(2, 3), fused)
    assert "Sub" in bad_output_reason(torch.zeros_like(q).as_subclass(Sub), q)
    assert "Tensorish" in bad_output_reason(Tensorish(), q)
    assert "autograd" in bad_output_reason(torch.zeros_like(q, requires_grad=True), q)


def profile(kernels=(("_attn_fwd", 7),), caller=7, math=(), dtoh=0, htod=0, error=None) -> dict:
    """A profiled call as profile.summarize reports it."""
    if error:
        return {"error": error, "kernels": [], "ops": []}
    listed = [{"name": n, "stream": s, "us": 10.0, "own": n.startswith("_attn")} for n, s in kernels]
    return {"caller_stream": caller, "kernels": listed,
            "other_streams": sorted({s for _, s in kernels if s != caller}), "library_math": list(math),
            "device_to_host_bytes": dtoh, "host_to_device_bytes": htod, "ops": []}


def gpu(first=None, steady=None, extra=0, single=False):
    return probes.gpu_integrity(first or profile(), steady or profile(), extra, scores_bytes=1 << 26,
                                out_bytes=1 << 20, require_single_kernel=single)


def test_gpu_integrity_passes_one_own_kernel_on_the_callers_stream():
    assert gpu().ok and gpu(single=True).ok


@pytest.mark.parametrize("observed, reason", [
    (dict(steady=profile(kernels=[("_attn_fwd", 9)])), "side_stream"),
    (dict(steady=profile(kernels=[("_attn_fwd", 7), ("sm90_xmma_gemm_bf16", 7)], math=["sm90_xmma_gemm_bf16"])),
     "forbidden_call"),
    (dict(first=profile(dtoh=1 << 20)), "forbidden_call"),
    (dict(steady=profile(htod=1 << 20)), "forbidden_call"),
    (dict(extra=1 << 27), "materialized_scores"),
    (dict(steady=profile(kernels=[("_zero", 7), ("_attn_fwd", 7)]), single=True), "multiple_kernels"),
    (dict(first=profile(error="the profiler saw no kernels (not even the verifier's markers)")), "tampering"),
])
def test_gpu_integrity_rejects(observed, reason):
    result = gpu(**observed)
    assert (result.ok, result.reason, result.stage) == (False, reason, "gpu integrity")
    assert result.message


def test_profile_summary_of_a_trace():
    """What the profiler's trace becomes: the markers fix the caller's stream; the rest is judged against it."""
    def kernel(name, stream, ts):
        return {"cat": "kernel", "name": name, "ts": ts, "dur": 5.0, "args": {"stream": stream}}

    events = [kernel("marker_add", 7, 0), kernel("_attn_fwd_0d1d2d", 7, 10), kernel("ampere_bf16_gemm_128x64", 7, 20),
              kernel("_attn_fwd", 13, 30), kernel("marker_add", 7, 40),
              {"cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pinned)", "args": {"bytes": 4096}},
              {"cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)", "args": {"bytes": 64}},
              {"cat": "cpu_op", "name": "aten::mm"}]
    summary = summarize(events, ["_attn_fwd"])
    assert summary["caller_stream"] == 7 and [k["name"] for k in summary["kernels"]] == [
        "_attn_fwd_0d1d2d", "ampere_bf16_gemm_128x64", "_attn_fwd"]
    assert summary["other_streams"] == [13] and summary["library_math"] == ["ampere_bf16_gemm_128x64"]
    assert (summary["device_to_host_bytes"], summary["host_to_device_bytes"]) == (4096, 64)
    assert summary["ops"] == ["aten::mm"]
    assert "error" in summarize([], ["_attn_fwd"])  # not even the markers: the profiler was disturbed
    result = probes.gpu_integrity(summary, summary, 0, 1 << 26, 1 << 20, False)
    assert result.reason == "forbidden_call" and "side_stream" in result.message  # the more specific first


def test_two_launches_are_fine_unless_a_single_kernel_is_required():
    two = profile(kernels=[("_zero", 7), ("_attn_fwd", 7)])
    assert gpu(steady=two).ok


def test_integrity_flags_a_record_with_a_score_sized_allocation():
    record = {"trial": "t00", "observations": [], "largest_allocation": 1 << 22}
    assert probes.integrity([record], False, scores_bytes={"t00": 1 << 23}).ok
    result = probes.integrity([record], False, scores_bytes={"t00": 1 << 22})
    assert (result.reason, result.stage) == ("materialized_scores", "integrity")


def test_the_score_sized_threshold_is_each_trials_own():
    """A trial larger than the target (past the index limits) may allocate its own, larger output."""
    records = [{"trial": "t00", "observations": [], "largest_allocation": 1 << 22},
               {"trial": "t17", "observations": [], "largest_allocation": 1 << 32}]
    assert probes.integrity(records, False, scores_bytes={"t00": 1 << 23, "t17": 1 << 35}).ok
    result = probes.integrity(records, False, scores_bytes={"t00": 1 << 23, "t17": 1 << 32})
    assert result.reason == "materialized_scores" and result.message.startswith("t17:")


def test_integrity_priority_and_leftover_processes():
    record = {"trial": "t00", "observations": [{"code": "uninitialized_output", "message": "m"},
                                               {"code": "output_aliases_input", "message": "a"}]}
    result = probes.integrity([record, {"tamper": {"changed_functions": [], "new_threads": 0, "audit": []}}],
                              False, {"t00": 1 << 30})
    assert result.reason == "output_aliases_input" and "uninitialized_output" in result.message
    assert probes.integrity([{"trial": "t00", "observations": []}], True, {"t00": 1 << 30}).reason == "tampering"


def timed(ms: float, wall_ms: float) -> dict:
    return {"timing": {"ms": ms, "ms_min": ms, "spread": 0.01, "calls": 100, "wall_ms": wall_ms, "samples": [ms]},
            "gpu": "test"}


def test_timing_stage_accepts_a_plausible_measurement():
    result = timing_stage(timed(1.0, 1.05), Metrics(tflops=400.0), Baseline(peak_tflops=800.0))
    assert result.ok and "1.000 ms" in result.message


def test_implausible_speed():
    result = timing_stage(timed(0.01, 0.011), Metrics(tflops=5000.0), Baseline(peak_tflops=800.0))
    assert (result.ok, result.reason) == (False, "implausible_speed")
    assert timing_stage(timed(0.01, 0.011), Metrics(tflops=5000.0), None).ok  # no peak measured: no claim


def test_work_the_events_cannot_see_is_side_stream():
    result = timing_stage(timed(0.05, 2.0), Metrics(tflops=100.0), Baseline(peak_tflops=800.0))
    assert (result.ok, result.reason) == (False, "side_stream")
    assert "0.050 ms" in result.message and "2.000 ms" in result.message
    assert "verify again on an idle one" in result.message  # what a user on a shared GPU can do about it


def scripted_passes(idle: list[float], busy: list[float], control: list[tuple[float, float]] = ()):
    """Pass timings in ms a step (a control pass's: and its kernel's ms), handed out in order, and the order the
    passes ran in."""
    ran = []

    def next_of(kind, times):
        def one_pass():
            ran.append(kind)
            return times[sum(k == kind for k in ran) - 1]
        return one_pass

    return next_of("idle", idle), next_of("busy", busy), next_of("control", list(control)), ran


def test_the_wall_clock_check_looks_again_while_it_disagrees_and_only_then():
    """Other processes' kernels come and go in a device-wide synchronize: an honest 0.020 ms kernel that measured
    0.4 ms over its first two busy passes passes on a later one. Where the first two agree, no more run; idle
    passes all run before the busy ones (so that the last outputs follow the last values)."""
    idle, busy, _, ran = scripted_passes([1.0, 1.1], [1.41, 1.43, 1.39, 1.02, 1.0, 1.0])
    assert timing.cross_checked_wall_ms(idle, busy, events_ms=0.020) == pytest.approx(0.02)
    assert ran == ["idle"] * 2 + ["busy"] * 4
    idle, busy, _, ran = scripted_passes([1.0, 1.0], [1.03, 1.02, 1.0])
    assert timing.cross_checked_wall_ms(idle, busy, events_ms=0.020) == pytest.approx(0.02)
    assert ran == ["idle"] * 2 + ["busy"] * 2


def test_work_hidden_from_the_events_is_in_every_pass_so_more_passes_never_clear_it():
    idle, busy, _, ran = scripted_passes([1.0, 1.0], [1.9, 1.6, 1.7, 1.55, 1.8, 1.6, 1.0])  # 0.55 ms hidden at least
    wall = timing.cross_checked_wall_ms(idle, busy, events_ms=0.020)
    assert wall == pytest.approx(0.55) and not timing.wall_clock_agrees(0.020, wall)
    assert ran.count("busy") == timing.WALL_PASSES_AT_MOST  # and no further: the seventh pass never ran
    result = timing_stage(timed(0.020, wall), Metrics(tflops=100.0), Baseline(peak_tflops=800.0))
    assert (result.ok, result.reason) == (False, "side_stream")
    assert timing.wall_clock_agrees(0.020, float("nan"))  # a wall clock not measured (trusted code) claims nothing


def test_every_reason_code_is_covered_here_or_in_the_other_test_files():
    """A reminder kept honest: each code has a triggering test (issue 4's 'for every reason code')."""
    here = {c[1] for c in CHEATS} | {"materialized_scores", "implausible_speed", "side_stream", "multiple_kernels"}
    elsewhere = {"syntax_error", "missing_entry_point", "no_triton_kernel", "needs_gpu", "compile_error",
                 "runtime_error", "crash", "out_of_memory", "timeout", "wrong_output", "nan_output", "truncated_work"}  # test_static.py, test_verify.py
    assert here | elsewhere == set(REASONS)


def test_timed_inputs_keep_their_memory_and_get_values_they_never_held():
    """What makes identity- or pointer-keyed replay visible while timing: same tensors, new values each call."""
    shape = Shape(1, 2, 2, 16, 16, 16)
    inputs = RotatingInputs(shape, torch.float16, "cpu", [5, 6])
    q = inputs.live[0][0]
    pointer, seen = q.data_ptr(), [q.clone()]
    for _ in range(3):
        inputs.refresh(0)
        assert inputs.live[0][0] is q and q.data_ptr() == pointer
        assert not any(torch.equal(q, earlier) for earlier in seen)  # never back to values a cache could hold
        seen.append(q.clone())
    assert inputs.versions() == [3, 0]  # the second set was not touched
    seed = RotatingInputs.seed_of(5, 3)
    expected = make_inputs(Trial(id="x", purpose="x", shape=shape, seed=seed), torch.float16, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(inputs.live[0], expected))  # the parent can rebuild them


def test_a_timed_output_of_values_the_inputs_held_earlier_is_cached_output(verifier, tmp_path):
    """The timed re-check names replay when an output matches what its (same) tensors held at an earlier call."""
    from verifier import reference
    checker = verifier("noop")
    timing_seeds = checker.draw().timing_seeds
    shape, dtype = checker.problem.shape, torch.float16

    def saved(i: int, version: int) -> str:
        trial = Trial(id="t", purpose="t", shape=shape, seed=RotatingInputs.seed_of(timing_seeds[i], version))
        q, k, v = make_inputs(trial, dtype, "cpu")
        path = tmp_path / f"out_{i}_{version}.pt"
        torch.save(reference.exact(q, k, v, checker.spec, None, shape).to(dtype), path)
        return str(path)

    versions = [4, 3, 3]
    honest = checker._recheck_timed([saved(i, n) for i, n in enumerate(versions)], versions, timing_seeds)
    assert honest.ok, honest.message
    # input set 1 hands back the output of its first values
    replayed = checker._recheck_timed([saved(0, 4), saved(1, 0), saved(2, 3)], versions, timing_seeds)
    assert (replayed.ok, replayed.reason, replayed.stage) == (False, "cached_output", "timed outputs")
    assert "input set 1" in replayed.message and "version 0 of 3" in replayed.message


def test_a_timed_call_that_hands_back_a_held_output_is_aliasing():
    result = probes.gpu_integrity(profile(), profile(), 0, 1 << 26, 1 << 20, False, reused_outputs=3)
    assert (result.ok, result.reason, result.stage) == (False, "output_aliases_input", "gpu integrity")


def test_what_other_users_of_the_gpu_add_to_a_control_kernel_comes_off_the_wall_clock():
    """Three other processes on the GPU add about 0.38 ms to every synchronised step that launches a kernel, in
    every pass (the fortieth session's noop kernel, 0.019 ms by its events, measured 0.339 ms a call after six
    passes). A control pass steps a trusted kernel of the call's length: what its steps take beyond that kernel is
    the other users' share, and comes off. Each control pass runs before a busy one, from the third on."""
    idle, busy, control, ran = scripted_passes([1.0, 1.0], [1.40, 1.41, 1.40], [(1.40, 0.02)])
    wall = timing.cross_checked_wall_ms(idle, busy, 0.020, control)
    assert wall == pytest.approx(0.02) and timing.wall_clock_agrees(0.020, wall)
    assert ran == ["idle"] * 2 + ["busy"] * 2 + ["control", "busy"]


def test_work_hidden_from_the_events_stays_in_when_the_gpu_is_shared():
    """The control pass runs none of the candidate's code: 0.55 ms of hidden work a call is still there after the
    other users' 0.38 ms comes off, in every pass."""
    idle, busy, control, ran = scripted_passes([1.0, 1.0], [1.95, 1.93] * 3, [(1.40, 0.02), (1.45, 0.02)] * 2)
    wall = timing.cross_checked_wall_ms(idle, busy, 0.020, control)
    assert wall == pytest.approx(0.55) and not timing.wall_clock_agrees(0.020, wall)
    assert ran.count("busy") == timing.WALL_PASSES_AT_MOST and ran.count("control") == timing.WALL_PASSES_AT_MOST - 2
    idle, busy, control, _ = scripted_passes([1.0, 1.0], [1.57] * 6, [(1.02, 0.02)] * 4)  # an idle GPU: nothing off
    assert timing.cross_checked_wall_ms(idle, busy, 0.020, control) == pytest.approx(0.57)


def test_the_under_load_tool_judges_hidden_work_only_where_the_events_missed_it():
    """tools/wall_clock_under_load.py (run on a GPU): a hidden matmul that holds every SM makes the caller's next
    kernel wait, and then the events take in its time; such a measurement agrees, rightly, and is not counted as
    hidden. An honest call that disagrees with the control pass fails the tool, as does hidden work let through."""
    def row(call, control, events_ms, wall_ms):
        return {"call": call, "control": control, "events_ms": events_ms, "wall_ms": wall_ms,
                "agrees": timing.wall_clock_agrees(events_ms, wall_ms)}
    measured = [row("honest", True, 0.02, 0.0), row("honest", False, 0.02, 0.10), row("hidden", True, 0.045, 1.61),
                row("hidden", False, 0.043, 1.63), row("hidden", True, 1.50, 1.72)]
    assert judge(measured) == (True, 2, 2)
    assert judge(measured + [row("honest", True, 0.02, 0.34)])[0] is False
    assert judge(measured + [row("hidden", True, 0.045, 0.2)]) == (True, 2, 3)  # 0.2 ms hidden: within the slack


def test_replacing_the_control_kernel_is_tampering(monkeypatch):
    """The control pass spins with torch's function as the verifier took it at import; a candidate that swapped it
    for a slower one would make other users' share look larger, and is caught by the tamper watch."""
    before = guards.measuring_functions()
    monkeypatch.setattr(timing, "_SPIN_CYCLES", lambda cycles: None)
    assert guards.changed_functions(before) == ["verifier.timing._SPIN_CYCLES"]
