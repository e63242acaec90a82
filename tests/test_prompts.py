"""The prompt templates, rendered with the data the proposers give them."""
from __future__ import annotations

import jinja2
import pytest

import prompts
from agent.llm import Answer
from agent.proposers import SearchContext, feedback_prompt, first_prompt
from agent.records import ACCEPTED, NO_KERNEL, REJECTED, Attempt, Candidate
from conftest import SMALL
from verifier.problem import Problem
from verifier.spec import SpecFiles, load_spec
from verifier.verdict import Metrics, StageResult, Verdict


@pytest.fixture
def context(specs):
    problem = Problem(SpecFiles(str(specs / "key_padding.py")), SMALL, "bf16", "cpu")
    return SearchContext(problem=problem, spec=load_spec(problem.spec), gpu=None, density=0.47, best=None)


def attempt(number: int, status: str, verdict: Verdict | None = None, format_error: str | None = None) -> Attempt:
    candidate = Candidate("model", 1, "lineage 1 round 1", source="def attention(q, k, v, *, scale=None): ...",
                          answer=Answer("```python\n...\n```", "", "stop", "m"), format_error=format_error)
    return Attempt(number, candidate, status, 0.0, 1.0, verdict=verdict)


def accepted_verdict() -> Verdict:
    metrics = Metrics(ms=1.25, tflops=412.0, flops=5.15e11, ratio_to_flex=1.08, flex_tflops=381.0, peak_tflops=790.0,
                      fraction_of_peak=0.52, sdpa_ms=1.0, launches_per_call=2, launch_names=["_attn", "_zero"],
                      mask_density=0.47)
    return Verdict(True, None, "accepted", [StageResult.passed("timing")], metrics)


def test_system_prompt_states_the_contract_and_the_rules():
    text = prompts.render("system")
    assert "attention(q, k, v, *, scale=None, **buffers)" in text and "1/sqrt(D)" in text
    assert "exp2" in text and "-inf" in text and "current_stream" in text
    assert "each verification draws new values (a fresh seed)" in text  # nothing to gain by fitting to a report


def test_first_prompt_carries_spec_shape_buffers_and_seed(context):
    text = first_prompt(context)
    assert "kv_lengths < " not in text and "def mask_mod" in text  # the spec's own source
    assert "`kv_lengths`: shape [8], dtype int32" in text
    assert "B=2, H=2, Hkv=2, Sq=64, Skv=64, D=32; dtype bf16" in text and "47.0%" in text
    assert "The kernel to beat" not in text
    seeded = first_prompt(SearchContext(**{**context.__dict__, "best": attempt(3, ACCEPTED, accepted_verdict())}))
    assert "The kernel to beat" in seeded and "412.0 TFLOP/s" in seeded and "lineage 1 round 1" in seeded
    assert "Compiled:" not in seeded  # no compiler report (a CPU run): nothing said


def test_the_first_prompt_says_when_a_score_mod_is_a_linear_bias(specs, context):
    """What the template knows reaches the model: ALiBi's bias can be added per key block, not per score."""
    problem = Problem(SpecFiles(str(specs / "alibi.py")), SMALL, "bf16", "cpu")
    alibi = SearchContext(problem=problem, spec=load_spec(problem.spec), gpu=None, density=1.0, best=None)
    assert "bias linear in q_idx and kv_idx" in first_prompt(alibi)
    assert "bias linear" not in first_prompt(context)  # key padding: a mask, no score_mod


def test_a_spec_the_lowering_refuses_still_gets_a_first_prompt(tmp_path):
    """The model is the only way to such a spec: the linear-bias check says nothing rather than failing."""
    spec = tmp_path / "running_sum.py"
    spec.write_text("import torch\n\n\ndef score_mod(score, b, h, q_idx, kv_idx):\n"
                    "    return torch.cumsum(score, dim=0) + kv_idx\n")
    problem = Problem(SpecFiles(str(spec)), SMALL, "bf16", "cpu")
    text = first_prompt(SearchContext(problem=problem, spec=load_spec(problem.spec), gpu=None, density=1.0,
                                      best=None))
    assert "torch.cumsum(score, dim=0)" in text and "bias linear" not in text


def test_the_seed_comes_with_what_the_compiler_made_of_it(context):
    """The kernel to beat, as the model first sees it, carries its compiler report (where its registers went)."""
    verdict = accepted_verdict()
    verdict.metrics.compiled = [compiled(0, False)]
    text = first_prompt(SearchContext(**{**context.__dict__, "best": attempt(3, ACCEPTED, verdict)}))
    assert "Compiled: _attn_fwd: 168 registers a thread, no spills, 160 KiB shared memory." in text


def test_feedback_on_a_rejection_carries_the_report_and_advice(context):
    verdict = Verdict(False, "wrong_output", "2 of 14 trials fail. First: t04 ragged 17: max error 0.8",
                      [StageResult.failed("numerics", "wrong_output", "2 of 14 trials fail")])
    text = feedback_prompt(attempt(2, REJECTED, verdict), [{"number": 1, "outcome": "no usable kernel"}], context)
    assert "REJECTED" in text and "`numerics`" in text and "`wrong_output`" in text and "max error 0.8" in text
    assert "bounds masks" in " ".join(text.split())  # the advice for wrong numbers
    assert "#1: no usable kernel" in text


def test_feedback_on_an_accepted_kernel_talks_speed(context):
    best = attempt(1, ACCEPTED, accepted_verdict())
    text = feedback_prompt(attempt(2, ACCEPTED, accepted_verdict()), [],
                           SearchContext(**{**context.__dict__, "best": best}))
    assert "ACCEPTED" in text and "412.0 TFLOP/s" in text and "1.08x flex" in text
    assert "52% of this GPU's measured dense matmul peak" in text and "SDPA (cuDNN/flash) 515 TFLOP/s" in text
    assert "launches 2 kernels per call (_attn, _zero)" in text and "47.0% of the scores" in text
    assert "attempt 1" in text  # the best so far is another attempt
    assert "Hopper" not in text  # a CPU problem gets no Hopper section


def test_the_hopper_section_renders():
    text = prompts.render("feedback", accepted=True, summary="s", best_summary=None, metrics=Metrics(), history=[],
                          hopper=True, stage=None, reason=None, reason_meaning="", message="")
    assert "TensorDescriptor" in text and "warp_specialize=True" in text and "heaviest query blocks first" in text


def test_a_format_error_is_passed_on_verbatim(context):
    text = feedback_prompt(attempt(4, NO_KERNEL, format_error="Your answer was cut off."), [], context)
    assert text.strip() == "Your answer was cut off."


def test_a_missing_variable_fails_loudly():
    with pytest.raises(jinja2.UndefinedError):
        prompts.render("first", spec_source="x")


def compiled(spills: int, serialized: bool) -> dict:
    warnings = ["(C7511) Potential Performance Loss: wgmma.mma_async instructions are serialized due to insufficient "
                "register resources for the wgmma pipeline in the function '_attn_fwd'"] if serialized else []
    return {"name": "_attn_fwd", "registers": 255 if spills else 168, "spills": spills, "shared_bytes": 164160,
            "num_warps": 4, "wgmma_serialized": serialized, "ptxas_warnings": warnings}


def test_feedback_says_what_the_compiler_did_wrong(context):
    """Spilled registers and serialized wgmmas (from the verifier's compiler report) reach the model, with what to
    change; a clean report adds nothing."""
    verdict = accepted_verdict()
    verdict.metrics.compiled = [compiled(96, True)]
    text = " ".join(feedback_prompt(attempt(2, ACCEPTED, verdict), [], context).split())
    assert "`_attn_fwd` spills 96 bytes of registers to local memory (255 registers a thread, 4 warps)" in text
    assert "ptxas serialized the wgmma instructions of `_attn_fwd` ((C7511)" in text and "one loop iteration" in text
    verdict.metrics.compiled = [dict(compiled(96, False), loop_spill_instructions=40)]
    text = " ".join(feedback_prompt(attempt(2, ACCEPTED, verdict), [], context).split())
    assert "4 warps; 40 spill instructions inside the matmul loop, run on every trip): smaller tiles" in text
    verdict.metrics.compiled = [dict(compiled(24, False), loop_spill_instructions=0)]  # one reload a query tile
    text = " ".join(feedback_prompt(attempt(2, ACCEPTED, verdict), [], context).split())
    assert "but none of it inside the matmul loop: that costs little" in text and "smaller tiles" not in text
    clean = accepted_verdict()
    clean.metrics.compiled = [compiled(0, False), {"error": "KeyError: 0"}]  # a report that could not be made
    text = feedback_prompt(attempt(2, ACCEPTED, clean), [], context)
    assert "spills" not in text and "serialized" not in text
