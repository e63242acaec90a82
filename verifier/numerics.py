"""Compare the candidate's outputs with the exact reference, trial by trial.

Tolerance is tied to the reference: a trial passes when the worst error is within a small factor of the
error that a careful computation in the same dtype makes (`reference.straightforward`), plus a floor of
a couple of ulps. The verifier, not the candidate's process, holds every reference. A trial that repeats an
earlier trial's inputs must reproduce that trial's output.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

import torch

from verifier import every_row, reference
from verifier.gpu_memory import first_line, hand_back_cached_memory, out_of_memory, ran_out_in_own_work
from verifier.gpu_turns import Turns
from verifier.spec import Spec
from verifier.suite import Trial, make_inputs, sampled_inputs
from verifier.verdict import StageResult

FACTOR = 4.0  # how many times the dtype's own error a kernel may make
FLOOR_ULPS = 2.0  # plus this many ulps of the output's magnitude


@dataclass
class TrialCheck:
    trial: str
    purpose: str
    shape: str
    dist: str
    ok: bool
    max_error: float
    tolerance: float
    dtype_error: float  # error of the straightforward computation
    mismatch_fraction: float
    nonfinite: int
    worst: dict  # batch, head, row, col of the worst element
    note: str = ""

    def line(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.worst.items())
        text = (f"{self.trial} {self.purpose} [{self.shape}, {self.dist}]: max error {self.max_error:.3g} "
                f"(tolerance {self.tolerance:.3g}) at {where}; {self.mismatch_fraction:.2%} of elements off")
        if self.nonfinite:
            text += f"; {self.nonfinite} NaN/inf"
        return text + (f"; {self.note}" if self.note else "")


def tolerance(dtype_error: float, ref_max: float, dtype: torch.dtype) -> float:
    return FACTOR * dtype_error + FLOOR_ULPS * torch.finfo(dtype).eps * max(ref_max, 1e-3)


def check_trial(trial: Trial, saved, spec: Spec, dtype: torch.dtype, device: str) -> TrialCheck:
    """`saved` is what the candidate's process saved (verifier.child.saved_output): the whole output, or for a
    sampled trial its sampled heads ([n, 1, Sq, D], in order) and every row's projection (verifier.every_row)."""
    out = compared_output(saved)
    heads = None
    if trial.sample:
        q, k, v = sampled_inputs(trial, dtype, device)
        heads = trial.sampled_heads()
    else:
        q, k, v = make_inputs(trial, dtype, device)
    exact = reference.exact(q, k, v, spec, trial.scale, trial.shape, heads)
    plain = reference.straightforward(q, k, v, spec, trial.scale, trial.shape, heads)
    if tuple(out.shape) != tuple(exact.shape):  # the child saves what it was told to; a mismatch is ours
        raise ValueError(f"{trial.id}: output of shape {tuple(out.shape)} saved, {tuple(exact.shape)} expected")
    check = compare(trial, out.to(device), exact, plain)
    if not trial.sample:
        return check
    check.worst["batch"], check.worst["head"] = trial.sample[check.worst["batch"]]  # as the problem numbers it
    rows = check_every_row(trial, saved["rows"], spec, dtype, device)
    if check.ok and not rows.ok:
        return replace(rows, note="every row projected onto a random +-1 vector over head_dim (the compared heads "
                                  "alone were within tolerance)")
    verdict = "within tolerance" if rows.ok else "off too"
    return replace(check, note=f"every row through a random projection {verdict} (max error {rows.max_error:.3g}, "
                               f"tolerance {rows.tolerance:.3g})")


def check_every_row(trial: Trial, rows: torch.Tensor, spec: Spec, dtype: torch.dtype, device: str) -> TrialCheck:
    """A sampled trial's output at every row, projected onto one random direction, against the reference's."""
    exact, plain = every_row.reference_rows(trial, spec, dtype, device)
    check = compare(trial, rows.to(device).unsqueeze(-1), exact, plain, dtype)
    del check.worst["col"]  # a projection has one
    return check


def compared_output(saved) -> torch.Tensor:
    """The output tensor in what a child saved: a sampled trial's saved heads, or the whole output."""
    return saved["heads"] if isinstance(saved, dict) else saved


def matching_trial(trials: list[Trial], output_path: str, spec: Spec, dtype: torch.dtype,
                   device: str) -> Trial | None:
    """The first of `trials` whose reference the saved output matches within tolerance, if any."""
    saved = torch.load(output_path, map_location="cpu")
    return next((t for t in trials if check_trial(t, saved, spec, dtype, device).ok), None)


def compare(trial: Trial, out: torch.Tensor, exact: torch.Tensor, plain: torch.Tensor,
            dtype: torch.dtype | None = None) -> TrialCheck:
    """`dtype`: the one whose ulps set the floor, if not out's (a projection is float32 of a bf16 output)."""
    dtype_error = float((plain.double() - exact).abs().max())
    tol = tolerance(dtype_error, float(exact.abs().max()), dtype or out.dtype)
    got = out.double()
    nonfinite = ~torch.isfinite(got) & torch.isfinite(exact)
    diff = (got - exact).abs()
    diff = torch.where(nonfinite, torch.full_like(diff, float("inf")), diff)
    worst_flat = int(diff.argmax())
    worst = dict(zip(("batch", "head", "row", "col"), torch.unravel_index(torch.tensor(worst_flat), diff.shape)))
    worst = {k: int(v) for k, v in worst.items()}
    max_error = float(diff.max())
    return TrialCheck(trial=trial.id, purpose=trial.purpose, shape=trial.shape.label(), dist=trial.dist,
                      ok=max_error <= tol, max_error=max_error, tolerance=tol, dtype_error=dtype_error,
                      mismatch_fraction=float((diff > tol).double().mean()), nonfinite=int(nonfinite.sum()),
                      worst=worst)


def judge(trials: list[Trial], outputs: dict[str, str], spec: Spec, dtype: torch.dtype, device: str,
          turns: Turns | None = None) -> StageResult:
    """One stage result over the whole suite, with the reason code that best explains any failure. A sampled
    trial's reference takes the GPU's turn from `turns` (verifier.gpu_turns): test processes verifying on an H100
    held up to 32 GB around it."""
    checks: list[TrialCheck] = []
    loaded: dict[str, torch.Tensor] = {}
    for trial in trials:
        saved = torch.load(outputs[trial.id], map_location="cpu")
        loaded[trial.id] = compared_output(saved)
        error = None
        with turns.take(f"the reference of {trial.id}") if trial.sample and turns else nullcontext():
            try:
                checks.append(check_trial(trial, saved, spec, dtype, device))
            except Exception as e:  # noqa: BLE001 - the reference's own work; only running out of memory is expected
                if not out_of_memory(e):
                    raise
                error = first_line(e)[:300]  # (not e: its traceback holds the reference's tensors)
            hand_back_cached_memory(trial, device)  # before the turn passes on
        if error is not None:  # (out of the handler, so that those tensors are freed before memory is measured)
            return StageResult.failed("numerics", "out_of_memory", _reference_out_of_memory(trial, device, error))
    failed = [c for c in checks if not c.ok]
    details = {"trials": [asdict(c) for c in checks],
               "max_error": max(c.max_error for c in checks),
               "error_budget_used": max(c.max_error / c.tolerance for c in checks if c.tolerance > 0)}
    unstable = _unrepeatable(trials, loaded, {c.trial: c for c in checks})
    if unstable:
        return StageResult.failed("numerics", "nondeterministic", unstable, **details)
    if not failed:
        return StageResult.passed("numerics", f"all {len(checks)} trials within tolerance", **details)
    first = failed[0]
    by_id = {t.id: t for t in trials}
    cached = _matches_earlier(by_id[first.trial], loaded, trials, first.tolerance)
    if cached:
        return StageResult.failed("numerics", "cached_output",
                                  f"{first.line()}. The output equals the output of {cached} (same shape, "
                                  f"different inputs): it does not follow the inputs.", **details)
    if first.nonfinite:
        return StageResult.failed("numerics", "nan_output", _summary(first, failed, checks), **details)
    unit_ok = [c for c in checks if c.dist == "normal"]
    if unit_ok and all(c.ok for c in unit_ok) and all(c.dist != "normal" for c in failed):
        return StageResult.failed("numerics", "truncated_work",
                                  _summary(first, failed, checks) + "\nEvery unit-scale trial passed; only large "
                                  "or adversarial logits fail, so keys or blocks whose weight is small on random "
                                  "data are being skipped or approximated. Process every unmasked key.", **details)
    return StageResult.failed("numerics", "wrong_output", _summary(first, failed, checks), **details)


def _reference_out_of_memory(trial: Trial, device: str, error: str) -> str:
    if device == "cuda":
        torch.cuda.empty_cache()  # this process's cached blocks back, so that what stays held is others'
    return ran_out_in_own_work(f"reference for trial {trial.label()}, in the verifier's process, not the kernel's "
                               f"(whose output was not judged)", device, error)


def _summary(first: TrialCheck, failed: list[TrialCheck], checks: list[TrialCheck]) -> str:
    passed = [c for c in checks if c.ok]
    lines = [f"{len(failed)} of {len(checks)} trials fail. First: {first.line()}."]
    lines += [f"  also: {c.line()}" for c in failed[1:4]]
    if passed:
        lines.append("Passing: " + "; ".join(f"{c.purpose} [{c.shape}, {c.dist}]" for c in passed[:6]))
    return "\n".join(lines)


def _unrepeatable(trials: list[Trial], loaded: dict, checks: dict[str, TrialCheck]) -> str | None:
    """What went wrong when a trial that repeats an earlier one's inputs gave a different output."""
    for trial in trials:
        if trial.repeat_of is None or trial.repeat_of not in loaded:
            continue
        a, b = loaded[trial.repeat_of].double(), loaded[trial.id].double()
        tol = checks[trial.repeat_of].tolerance
        if a.shape != b.shape:
            return f"{trial.id} repeated {trial.repeat_of} with the same inputs but returned shape {tuple(b.shape)}, " \
                   f"not {tuple(a.shape)}."
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        diff = torch.where(same, 0.0, (a - b).abs().nan_to_num(nan=float("inf")))
        if float(diff.max()) > tol:
            worst = torch.unravel_index(diff.argmax(), diff.shape)
            where = ", ".join(f"{k}={int(v)}" for k, v in zip(("batch", "head", "row", "col"), worst))
            return (f"{trial.id} repeated {trial.repeat_of} [{trial.shape.label()}, {trial.dist}] with the same "
                    f"inputs, but the outputs differ by up to {float(diff.max()):.3g} (tolerance {tol:.3g}) at "
                    f"{where}; {float((diff > 0).double().mean()):.2%} of elements differ. Identical calls must give "
                    f"the same output: carry no state from call to call, and let no two programs race on one output "
                    f"element.")
    return None


def _matches_earlier(trial: Trial, loaded: dict, trials: list[Trial], tol: float) -> str | None:
    """The id of an earlier trial with the same shape, but other inputs, whose output this one repeats."""
    out = loaded[trial.id].double()
    for earlier in trials:
        if earlier.id == trial.id:
            return None
        if earlier.id == trial.repeat_of:
            continue  # the same inputs: the same output is right
        if earlier.shape == trial.shape and torch.isfinite(out).all():
            if float((loaded[earlier.id].double() - out).abs().max()) <= tol:
                return earlier.id
    return None
