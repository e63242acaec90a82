"""The verifier end to end on CPU (Triton's interpreter, real child processes): correct kernels are accepted,
kernels that crash, hang, raise, or are wrong in the ways the suite is built to expose get the right code."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from kernels import flash_source, gluon_source
from verifier.problem import Shape
from verifier.sandbox import Limits
from verifier.spec import index_grid
from verifier.suite import build_suite
from verifier.verdict import Verdict

SMALL = Shape(2, 2, 2, 64, 64, 32)

GOOD = [  # spec file(s), the kernel's score and mask, a target that exercises the spec
    pytest.param("noop", None, None, None, SMALL, id="noop"),
    pytest.param("rel_pos", None, "rel_pos", None, Shape(1, 4, 2, 64, 64, 32), id="rel_pos-gqa"),
    pytest.param(None, "causal", None, "causal", Shape(2, 2, 2, 64, 96, 32), id="causal-sq<skv"),
    # batch 8 reaches key lengths 77 and 1 within the CPU lengths
    pytest.param(None, "key_padding", None, "key_padding", Shape(8, 1, 1, 128, 128, 32), id="key_padding-b8"),
    pytest.param("softcap", None, "softcap", None, SMALL, id="softcap"),
    pytest.param("alibi", None, "alibi", None, Shape(1, 4, 4, 64, 64, 32), id="alibi-h4"),
]


def accepted(verdict: Verdict) -> bool:
    assert verdict.accepted, f"{verdict.reason}: {verdict.message}"
    return True


def rejected(verdict: Verdict, reason: str, stage: str | None = None) -> Verdict:
    assert not verdict.accepted
    assert verdict.reason == reason, f"expected {reason}, got {verdict.reason}: {verdict.message}"
    assert verdict.message and verdict.failed_stage.reason == reason
    if stage:
        assert verdict.failed_stage.stage == stage
    return verdict


def local_spec(tmp_path_factory, text: str, name: str):
    path = tmp_path_factory.mktemp("specs") / f"{name}.py"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ accepted kernels
@pytest.mark.parametrize("score_file, mask_file, score, mask, shape", GOOD)
def test_good_kernels_are_accepted(verifier, score_file, mask_file, score, mask, shape):
    verdict = verifier(score_file, mask_file, shape).verify(flash_source(score, mask))
    assert accepted(verdict)
    assert [s.stage for s in verdict.stages] == ["static", "run", "integrity", "numerics"]
    assert all(s.ok for s in verdict.stages)
    assert 0 < verdict.metrics.error_budget_used <= 0.5  # comfortably inside the tolerance, not borderline
    assert verdict.metrics.ms is None  # no timing under the interpreter
    assert any("interpreter" in note for note in verdict.notes)


def test_a_spec_named_by_a_relative_path(specs, monkeypatch):
    """The library API takes the path as given; the child process runs in its own directory."""
    from verifier.problem import Problem
    from verifier.spec import SpecFiles
    from verifier.verify import Verifier

    monkeypatch.chdir(specs.parent)
    problem = Problem(SpecFiles(mask_path=f"{specs.name}/causal.py"), SMALL, "bf16", "cpu")
    verifier = Verifier(problem)
    assert verifier.problem.spec.paths == [str((specs / "causal.py").resolve())]  # what every child is handed
    assert accepted(verifier.verify(flash_source(None, "causal")))


def test_good_kernel_is_accepted_every_time(verifier):
    """No false alarms: the same correct kernel, judged again and again, with a different block size."""
    v = verifier("causal")
    for _ in range(3):
        assert accepted(v.verify(flash_source(mask="causal", bm=16, bn=64)))


def test_ordinary_python_in_the_kernel_file_is_no_tampering(verifier):
    """A @dataclass config (dataclasses sets the class's __doc__, an audited event) and an enum are plain code."""
    source = flash_source().replace("import math\n", "import enum\nimport math\nfrom dataclasses import dataclass\n")
    source = source.replace("\n\ndef attention", '''

class Layout(enum.Enum):
    BHSD = 0


@dataclass(frozen=True)
class Config:
    layout: Layout = Layout.BHSD
    calls: int = 0


CONFIG = Config()


def attention''').replace("    return o\n", "    assert CONFIG.layout is Layout.BHSD\n    return o\n")
    assert accepted(verifier("noop").verify(source))


def test_fully_masked_rows(verifier, tmp_path_factory):
    path = local_spec(tmp_path_factory, "def mask_mod(b, h, q_idx, kv_idx):\n    return q_idx >= kv_idx + 5\n",
                      "late_start")
    v = verifier(path)
    # the suite really holds rows with no key at all: rows 0..4 of every trial
    for trial in v.suite:
        rows = torch.arange(trial.shape.seq_len)
        b, h, q, kv = index_grid(trial.shape, rows, "cpu")
        kept = torch.broadcast_to(v.spec.mask_mod(b, h, q, kv), (*trial.shape.q_shape[:3], trial.shape.kv_seq_len))
        assert not kept[:, :, : min(5, trial.shape.seq_len)].any()
    assert accepted(v.verify(flash_source(mask="all_masked_early_rows")))


def test_verdict_round_trips_and_workdir_is_kept(verifier, tmp_path):
    verdict = verifier("noop").verify(flash_source(), workdir=tmp_path)
    assert accepted(verdict)
    assert Verdict.from_dict(verdict.to_dict()) == verdict
    assert (tmp_path / "kernel.py").read_text() == flash_source()
    assert not list(tmp_path.glob("*/*.pt"))  # outputs are deleted once judged


# -------------------------------------------------------------------------------------- numerically wrong
def test_missing_bounds_masks_write_out_of_bounds(verifier):
    rejected(verifier("noop").verify(flash_source(variant="no_bounds")), "out_of_bounds_write", "integrity")


def test_reading_past_the_end_of_v_is_caught(verifier):
    """Loads past an input's end read the verifier's NaN guard: 0 * NaN poisons the row."""
    source = flash_source().replace("mask=kv_ok[:, None], other=0.0)", ")")
    verdict = rejected(verifier("noop").verify(source), "nan_output", "numerics")
    assert "NaN/inf" in verdict.message


def test_padded_keys_counted_is_wrong_only_on_ragged_lengths(verifier):
    verdict = rejected(verifier("noop").verify(flash_source(variant="padded_keys_counted")), "wrong_output",
                       "numerics")
    trials = {t["purpose"]: t for t in verdict.failed_stage.details["trials"]}
    assert trials["target"]["ok"] and trials["target, large logits"]["ok"]  # 64 keys: two full blocks
    assert not trials["ragged 17"]["ok"] and not trials["one query, one key"]["ok"]
    assert "Passing: target [" in verdict.message
    assert "max error" in verdict.message and "% of elements off" in verdict.message and "at batch=" in verdict.message


def test_a_kernel_that_drops_the_sign_of_the_scale_is_wrong_only_on_the_negative_scale(verifier):
    source = flash_source().replace("scale = 1.0 / math.sqrt(D) if scale is None else scale",
                                    "scale = 1.0 / math.sqrt(D) if scale is None else abs(scale)")
    verdict = rejected(verifier("noop").verify(source), "wrong_output", "numerics")
    trials = {t["purpose"]: t["ok"] for t in verdict.failed_stage.details["trials"]}
    assert not trials["negative scale"] and trials["explicit scale"] and trials["target"]


TRANSPOSED = "[B, S, H, D] memory (q.transpose(1, 2) of a projection)"
WIDER = "views into wider memory (a fused projection, a longer KV cache)"


def test_a_kernel_that_assumes_contiguous_inputs_is_wrong_only_on_a_models_views(verifier):
    """Models hand attention q.transpose(1, 2) of a [B, S, H, D] projection, or views into wider memory: a kernel
    that works its strides out from the shapes is right on contiguous inputs and wrong on both. The kernel that
    reads the strides it is given (flash_source) passes every trial, those included
    (test_good_kernels_are_accepted)."""
    source = flash_source().replace("*q.stride()[:3], *k.stride()[:3], *v.stride()[:3]",
                                    "H * SQ * D, SQ * D, D, HK * SKV * D, SKV * D, D, HK * SKV * D, SKV * D, D")
    verdict = rejected(verifier("noop").verify(source), "wrong_output", "numerics")
    trials = {t["purpose"]: t["ok"] for t in verdict.failed_stage.details["trials"]}
    assert not trials[TRANSPOSED] and not trials[WIDER]
    assert all(ok for purpose, ok in trials.items() if purpose not in (TRANSPOSED, WIDER))


@pytest.mark.parametrize("tensor", ["q", "k", "v"])
def test_a_kernel_that_takes_one_tensors_strides_for_anothers_is_wrong_on_views_into_wider_memory(verifier,
                                                                                                   tensor):
    """In contiguous and transposed memory k and v are laid out alike, and q like them where the lengths are
    equal: a kernel that indexes k with v's strides or v with k's passes those trials (and one that reads q with
    k's passes the trials of equal lengths). In the views into wider memory (q among more heads of a fused
    projection, k a prefix of a longer cache, v half rows of a fused K/V projection) every tensor's strides
    differ, and such a kernel is wrong there."""
    borrowed = {"q": "*k.stride()[:3], *k.stride()[:3], *v.stride()[:3]",
                "k": "*q.stride()[:3], *v.stride()[:3], *v.stride()[:3]",
                "v": "*q.stride()[:3], *k.stride()[:3], *k.stride()[:3]"}[tensor]
    source = flash_source().replace("*q.stride()[:3], *k.stride()[:3], *v.stride()[:3]", borrowed)
    verdict = verifier("noop").verify(source)
    assert not verdict.accepted and verdict.failed_stage.stage == "numerics"
    trials = {t["purpose"]: t["ok"] for t in verdict.failed_stage.details["trials"]}
    assert not trials[WIDER]
    if tensor != "q":  # k and v share strides in every other layout
        assert all(ok for purpose, ok in trials.items() if purpose != WIDER)


def test_writing_between_the_rows_of_an_input_view_is_caught(verifier):
    """The gaps in the views into wider memory hold guard NaNs: a kernel that stores into them (here, zeros into
    the head just before q's first, in q's fused projection) is caught writing outside its tensors."""
    source = flash_source()
    old = "    return o\n"
    assert source.count(old) == 1
    source = source.replace(old, "    if q.stride(1) == D and q.stride(2) > H * D:  # q among more heads\n"
                                 "        q.as_strided((D, ), (1, ), q.storage_offset() - D).zero_()\n"
                                 "    return o\n")
    verdict = verifier("noop").verify(source)
    assert not verdict.accepted
    assert "the memory between q's rows was overwritten" in verdict.message


def test_no_running_max_overflows_on_large_logits(verifier):
    verdict = rejected(verifier("noop").verify(flash_source(variant="no_max")), "nan_output", "numerics")
    failed = [t for t in verdict.failed_stage.details["trials"] if not t["ok"]]
    assert failed and all(t["dist"] != "normal" for t in failed) and failed[0]["nonfinite"] > 0


@pytest.mark.slow
def test_skipping_far_keys_is_truncated_work(verifier, tmp_path_factory):
    """With a strong distance penalty far keys weigh nothing on unit-scale data, but large logits need them."""
    path = local_spec(tmp_path_factory, "def score_mod(score, b, h, q_idx, kv_idx):\n"
                                        "    return score - 0.5 * (q_idx - kv_idx).abs()\n", "local_bias")
    v = verifier(path, shape=Shape(1, 2, 2, 128, 128, 32))
    assert accepted(v.verify(flash_source("local_bias")))
    verdict = rejected(v.verify(flash_source("local_bias", variant="local_only")), "truncated_work", "numerics")
    assert "Every unit-scale trial passed" in verdict.message


def test_output_buffer_handed_out_twice(verifier):
    verdict = rejected(verifier("noop").verify(flash_source(variant="shared_output")), "output_aliases_input",
                       "integrity")
    assert "earlier call's output" in verdict.message


# ------------------------------------------------------------------------------- crashes, hangs and errors
def test_segfault_is_a_crash(verifier):
    source = flash_source().replace("q = tl.load(Q + b", "q = tl.load(Q + 10**12 + b")
    verdict = rejected(verifier("noop").verify(source), "crash", "run")
    assert "SIGSEGV" in verdict.message


def test_hang_in_a_later_call_is_a_timeout_within_the_call_limit(verifier):
    source = flash_source().replace("    m_i = tl.full", "    n = 0\n    while (SQ == 17) & (n >= 0):\n"
                                    "        n += 1\n    m_i = tl.full", 1)
    v = verifier("noop", limits=Limits(compile_s=60.0, call_s=2.0))
    started = time.monotonic()
    verdict = rejected(v.verify(source), "timeout", "run")
    elapsed = time.monotonic() - started
    assert "ragged 17" in verdict.message  # the phase it hung in
    assert elapsed < 20, f"a 2 s call limit took {elapsed:.1f} s to end the hang"


@pytest.mark.slow
def test_hang_in_the_first_call_is_bounded_by_the_compile_limit(verifier):
    source = flash_source().replace("    m_i = tl.full", "    n = 0\n    while n >= 0:\n        n += 1\n"
                                    "    m_i = tl.full", 1)
    v = verifier("noop", limits=Limits(compile_s=6.0, call_s=60.0))
    started = time.monotonic()
    verdict = rejected(v.verify(source), "timeout", "run")
    elapsed = time.monotonic() - started
    assert "t00" in verdict.message and 6 <= elapsed < 25


def test_host_exception_is_a_runtime_error_naming_the_line(verifier):
    source = flash_source().replace("    o = torch.empty_like(q)\n", "    o = torch.empty_like(q)\n"
                                    "    assert SQ >= 16, f'need at least 16 queries, got {SQ}'\n")
    line = source.splitlines().index("    assert SQ >= 16, f'need at least 16 queries, got {SQ}'") + 1
    verdict = rejected(verifier("noop").verify(source), "runtime_error", "run")
    assert f'File "kernel.py", line {line}, in attention' in verdict.message
    assert "AssertionError: need at least 16 queries, got 1" in verdict.message


def test_import_error_is_a_compile_error(verifier):
    source = flash_source().replace("import triton.language as tl\n",
                                    "import triton.language as tl\nfrom triton.language import flash_attention\n")
    verdict = rejected(verifier("noop").verify(source), "compile_error", "run")
    assert "ImportError" in verdict.message and "during 'import'" in verdict.message


def test_process_exit_without_a_result_is_a_crash(verifier):
    """`import os`/`import sys` are rejected statically; operator.attrgetter reaches os anyway, at run time."""
    source = flash_source().replace("import math\n", "import math\nimport operator\n").replace(
        "    return o\n", "    operator.attrgetter('os')(torch)._exit(0)\n    return o\n")
    verdict = rejected(verifier("noop").verify(source), "crash", "run")
    assert "exited with status 0" in verdict.message and "without reporting a result" in verdict.message


def test_system_exit_is_reported_as_a_runtime_error(verifier):
    """SystemExit is an exception: the child catches it and reports it like any other."""
    source = flash_source().replace("    return o\n", "    raise SystemExit(0)\n")
    verdict = rejected(verifier("noop").verify(source), "runtime_error", "run")
    assert "SystemExit" in verdict.message


@pytest.mark.parametrize("raised", ["torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 64.00 GiB')",
                                    "RuntimeError('CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate')"])
def test_running_out_of_gpu_memory_in_the_call_is_its_own_reason(verifier, raised):
    """torch's own error, or cuBLAS's, which torch passes on as a plain RuntimeError."""
    source = flash_source().replace("    return o\n", f"    raise {raised}\n")
    verdict = rejected(verifier("noop").verify(source), "out_of_memory", "run")
    assert "Tried to allocate" in verdict.message or "CUBLAS_STATUS_ALLOC_FAILED" in verdict.message


def test_running_out_of_memory_in_the_verifiers_own_check_says_so_and_other_errors_are_not_disguised(
        tmp_path, monkeypatch):
    """On a GPU that other processes fill, the candidate's process can run out of memory after a correct call,
    saving the output (on the GPU this was cuBLAS failing to make its handle): the verdict says it was the
    verifier's work, on which trial, and what to do, not that the kernel crashed."""
    from verifier import child
    trial = build_suite(SMALL, interpreted=True)[0]
    job = {"device": "cpu", "run_dtype": "fp16", "kernel": str(tmp_path / "kernel.py"), "out_dir": str(tmp_path)}
    checker = child.Checker(job, lambda q, k, v, scale=None: torch.zeros_like(q), {})
    assert checker.run(trial)["observations"] == []  # the check runs as it is

    def out_of_memory(out, trial):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    monkeypatch.setattr(child, "saved_output", out_of_memory)
    with pytest.raises(child.CandidateFailure) as failure:
        checker.run(trial)
    report = failure.value.report()
    assert report["code"] == "out_of_memory" and report["type"] == "OutOfMemoryInCheck"
    assert f"verifier's own work on trial {trial.id}" in report["message"] and "verify again" in report["message"]
    assert report["message"].endswith("The error: RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                                      "`cublasCreate(handle)`")

    def broken(out, trial):
        raise ValueError("a bug in the verifier")
    monkeypatch.setattr(child, "saved_output", broken)
    with pytest.raises(ValueError, match="a bug in the verifier"):
        checker.run(trial)


def test_the_child_sees_no_secrets(verifier, monkeypatch):
    """A kernel that reads its environment (os reached at run time) finds no keys or tokens to leak."""
    monkeypatch.setenv("KGEN_TEST_API_KEY", "sk-must-not-leak")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    source = flash_source().replace("import math\n", "import math\nimport operator\n").replace(
        "    return o\n", "    names = sorted(operator.attrgetter('os.environ')(torch))\n"
                         "    raise RuntimeError('environment: ' + ' '.join(names))\n")
    verdict = rejected(verifier("noop").verify(source), "runtime_error", "run")
    assert "environment: " in verdict.message and " PATH" in verdict.message
    assert "API_KEY" not in verdict.message and "sk-must-not-leak" not in verdict.message


def test_static_rejection_runs_nothing(verifier):
    verdict = rejected(verifier("noop").verify(flash_source() + "\nimport numpy\n"), "forbidden_call", "static")
    assert [s.stage for s in verdict.stages] == ["static"]


# --------------------------------------------------------------------------------------------------- suite
@pytest.mark.parametrize("target, interpreted", [
    (Shape(4, 16, 16, 4096, 4096, 64), False),
    (Shape(4, 16, 4, 4096, 4096, 128), True),
    (SMALL, True),
    (Shape(1, 1, 1, 1, 1, 8), True),
])
def test_suite_covers_what_the_issue_asks(target, interpreted):
    suite = build_suite(target, interpreted)
    top = suite[0].shape
    assert suite[0].purpose == "target" and top.group == target.group and top.head_dim == target.head_dim
    assert {t.dist for t in suite if t.shape == top} >= {"normal", "large", "adversarial"}
    assert len({t.seed for t in suite if t.repeat_of is None}) == len([t for t in suite if t.repeat_of is None])
    assert any(t.scale is not None and t.scale > 0 for t in suite)
    assert any(t.scale is not None and t.scale < 0 for t in suite)
    for t in suite:
        assert t.shape.seq_len <= top.seq_len and t.shape.kv_seq_len <= top.kv_seq_len
    lengths = {t.shape.seq_len for t in suite}
    if top.kv_seq_len > 1:  # decoding: a single query over many keys
        assert any(t.shape.seq_len == 1 and t.shape.kv_seq_len == min(top.kv_seq_len, 100 if interpreted else 1000)
                   for t in suite)
    assert 1 in lengths and (17 in lengths or top.seq_len < 17)
    if top.seq_len > 4:
        assert any(t.shape.seq_len < t.shape.kv_seq_len for t in suite)
        assert any(t.shape.seq_len > t.shape.kv_seq_len for t in suite)
    if not interpreted:
        assert top == target and {127, 1000} <= lengths
    else:
        assert top.seq_len <= 128 and top.batch <= 8
    layouts = [t.layout for t in suite]
    assert layouts.count("bshd") == layouts.count("strided") == 1 and suite[0].layout == "contiguous"
    repeat = suite[-1]
    assert repeat.repeat_of == suite[0].id
    assert (repeat.shape, repeat.dist, repeat.seed, repeat.scale) == (top, "normal", suite[0].seed, suite[0].scale)


def test_each_verification_draws_its_inputs_from_a_seed_of_its_own(verifier):
    """A fresh seed for every verification (a kernel cannot be fitted to inputs it has seen), the same trials
    otherwise; a given seed draws the same inputs every time; no two groups of inputs (the suite's trials, the
    timed calls' versions) share a seed."""
    from dataclasses import replace

    from verifier.suite import RotatingInputs
    from verifier.verify import Verifier, VerifyOptions

    problem = verifier("noop").problem
    fresh = Verifier(problem)
    first, second = fresh.draw(), fresh.draw()
    assert first.seed != second.seed and first.timing_seeds != second.timing_seeds
    assert [t.seed for t in first.suite] != [t.seed for t in second.suite]
    assert [replace(t, seed=0) for t in first.suite] == [replace(t, seed=0) for t in second.suite]
    fixed = Verifier(problem, VerifyOptions(seed=first.seed))
    assert fixed.draw() == fixed.draw() == first
    trial_seeds = [t.seed for t in first.suite if t.repeat_of is None]
    assert len(set(trial_seeds)) == len(trial_seeds) and min(trial_seeds) == first.seed
    timed = {RotatingInputs.seed_of(s, version) for s in first.timing_seeds for version in range(10_000)}
    assert not timed & set(trial_seeds)


def test_a_hung_kernel_dies_with_the_verifier(tmp_path, specs):
    """The verifier killed outright (SIGKILL, no cleanup) must not leave the candidate's process spinning."""
    import os
    import signal
    import subprocess
    import sys

    kernel = tmp_path / "hang.py"
    kernel.write_text(flash_source().replace("    m_i = tl.full", "    n = 0\n    while n >= 0:\n        n += 1\n"
                                             "    m_i = tl.full", 1))
    root = Path(__file__).resolve().parents[1]
    verifier_proc = subprocess.Popen([sys.executable, "-m", "cli", "verify", str(kernel), "--score-mod",
                                      str(specs / "noop.py"), "--device", "cpu", "--batch", "1", "--heads", "1",
                                      "--seq-len", "32", "--head-dim", "16", "--compile-timeout", "600"],
                                     cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "TMPDIR": str(tmp_path)})  # its work folder, left by SIGKILL

    def candidate_pids() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                if entry.name.isdigit() and b"verifier.child" in cmd and int((entry / "stat").read_text().split()[3]) \
                        == verifier_proc.pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    deadline = time.monotonic() + 60
    while not candidate_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    children = candidate_pids()
    assert children, "the verifier never started its child"
    time.sleep(3)  # let it reach the hanging loop
    os.kill(verifier_proc.pid, signal.SIGKILL)
    verifier_proc.wait()
    def running(pid: int) -> bool:  # exists and is not a zombie waiting to be reaped
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(running(pid) for pid in children):
        time.sleep(0.2)
    assert not any(running(pid) for pid in children)


def test_a_gluon_kernel_on_the_cpu_says_it_needs_a_gpu(verifier, specs):
    """Gluon has no CPU interpreter: the verdict says so before anything runs, instead of a driver error."""
    source = gluon_source(str(specs / "noop.py"))
    verdict = rejected(verifier("noop").verify(source), "needs_gpu", "static")
    assert "--device cuda" in verdict.message and len(verdict.stages) == 1
