"""Judge one candidate for one problem: static → run → integrity → numerics → timing.

`Verifier` holds what is computed once per problem (the loaded spec, the suite, the mask density, the
FlexAttention baseline) so that judging many candidates in a run repeats none of it.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from verifier import numerics, probes
from verifier.baseline import Baseline, measure_baseline
from verifier.gpu_turns import CHILD_WAITING, TurnCancelled, Turns, Wait, describe, lock_path
from verifier.past_limits import past_limits_trial
from verifier.problem import DTYPES, Problem, Shape
from verifier.reference import mask_density
from verifier.sandbox import Child, ChildResult, Limits, describe_signal
from verifier.spec import Spec, covers, load_spec, validate_on_shape
from verifier.static import SourceFacts, check_source
from verifier.suite import RotatingInputs, Trial, build_suite, fresh_seed
from verifier.timing import wall_clock_agrees
from verifier.verdict import Metrics, StageResult, Verdict, conclude

# where each group of inputs starts from the verifier's seed: the suite's trials at +0, +1, ... (verifier.suite);
# these are far enough apart that no two inputs share a seed (seed 1000 gives the fixed seeds of earlier versions)
PAST_LIMITS_SEED, TIMING_SEEDS = 3242, (8001, 8002, 8003)
IMPLAUSIBLE_MARGIN = 1.02  # above the measured matmul peak by more than this: not a real measurement


class Cancelled(Exception):
    """The caller asked to stop while a candidate was being judged."""


class VerifierInternalError(RuntimeError):
    """The verifier's own code failed in the child (not the candidate's fault)."""


@dataclass
class VerifyOptions:
    limits: Limits = field(default_factory=Limits)
    time: bool = True  # time accepted kernels when on a GPU
    baseline: bool = True  # time FlexAttention for the "x.xx× flex" ratio (cached on disk)
    require_single_kernel: bool = False
    past_limits: bool = True  # on a GPU, the trial past 65535 batch x heads and 2**31 elements (verifier.past_limits)
    seed: int | None = None  # of every verification's inputs; None: a fresh one for each (verifier.suite.fresh_seed)
    cancel: threading.Event | None = None


@dataclass(frozen=True)
class Draw:
    """The inputs of one verification: its seed, the suite's trials drawn from it, and the timed calls' seeds."""
    seed: int
    suite: list[Trial]
    timing_seeds: list[int]


class Verifier:
    def __init__(self, problem: Problem, options: VerifyOptions | None = None, spec: Spec | None = None):
        # by absolute path: the verifier's and the baseline's child processes run in their own directories
        self.problem = replace(problem.validate(), spec=problem.spec.resolved())
        self.options = options or VerifyOptions()
        self.spec = spec or load_spec(self.problem.spec)
        validate_on_shape(self.spec, problem.shape)
        self.interpreted = problem.device == "cpu"
        self.run_dtype = "fp16" if self.interpreted and problem.dtype == "bf16" else problem.dtype
        self.seed = fresh_seed() if self.options.seed is None else self.options.seed  # the one `suite` is drawn from
        self.notes = list(self.spec.notes)
        # turns on the GPU among verifications in every process: timing, and the trial past the index limits
        self.turns = Turns(None if self.interpreted else lock_path(problem.device))
        past_limits = None
        if not self.interpreted and self.options.past_limits:
            with self.turns.take("measuring free memory"):  # not while another process runs that trial
                free = _free_gpu_bytes()
            past_limits, note = past_limits_trial(problem.shape, lambda s: covers(self.spec, s), free,
                                                  self.seed + PAST_LIMITS_SEED)
            self.notes.append(note)
        self.suite = build_suite(problem.shape, self.interpreted, past_limits, self.seed)
        if self.interpreted:
            self.notes.append("CPU: kernels run under Triton's interpreter on shapes capped at "
                              f"{self.suite[0].shape.label()}; timing skipped")
            if problem.dtype == "bf16":
                self.notes.append("CPU: bf16 run as fp16 (the interpreter's tl.dot is wrong for bf16)")
        self.timing_lock = threading.Lock()  # GPU timing never overlaps other timing
        self._child: Child | None = None  # the candidate's process while one is judged
        self._density: float | None = None
        self._baseline: Baseline | None = None

    @property
    def density(self) -> float:
        if self._density is None:
            self._density = mask_density(self.spec, self.problem.shape, self.problem.device)
        return self._density

    def waiting_for_turn(self) -> str | None:
        """What the verification under way waits for the GPU's turn for (verifier.gpu_turns), in this process or in
        the candidate's, if it does: for a live status line, since other processes' verifications can hold it for
        a while."""
        child = self._child
        phase = child.result.phase if child is not None else ""
        return self.turns.waiting or (phase[len(CHILD_WAITING):] if phase.startswith(CHILD_WAITING) else None)

    @property
    def measured_baseline(self) -> Baseline | None:
        """The baseline if it has been measured in this run (never measures it)."""
        return self._baseline

    def baseline(self) -> Baseline | None:
        """FlexAttention's time, SDPA's where it applies, and the GPU's matmul peak (once per problem)."""
        if self.interpreted or not self.options.baseline:
            return None
        if self._baseline is None:
            self._baseline = measure_baseline(self.problem, self.density, self.options.limits, turns=self.turns)
            # its turns are said in the notes of the verification that measured it
            self.turns.add([Wait(**w) for w in self._baseline.turn_waits])
        return self._baseline

    def draw(self) -> Draw:
        """One verification's inputs: from the given seed (VerifyOptions.seed) in every verification, else from a
        fresh one each time, so that no two verifications of a run see the same values (a kernel reworked on the
        evidence of a failure meets new ones). The past-limits trial keeps its sampled heads: every row is checked."""
        seed = self.seed if self.options.seed is not None else fresh_seed()
        shift = seed - self.seed
        return Draw(seed, [replace(t, seed=t.seed + shift) for t in self.suite],
                    [seed + offset for offset in TIMING_SEEDS])

    # ------------------------------------------------------------------------------------------- verify
    def verify(self, source: str, workdir: Path | None = None) -> Verdict:
        """Judge `source`. Child files go to `workdir` (kept) or a temporary folder (removed)."""
        started = time.monotonic()
        draw = self.draw()
        waits_before = len(self.turns.waits)
        self.turns.cancel = self.options.cancel  # (set after construction, by the search that owns it)
        owned = workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="kgen-verify-")) if owned else Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            stages, metrics = self._stages(source, workdir, draw)
        except TurnCancelled:  # given up while waiting for the GPU's turn, in this process
            raise Cancelled() from None
        finally:
            for pt in workdir.glob("*/*.pt"):
                pt.unlink()  # outputs can be large; the verdict keeps what they showed
            if owned:
                shutil.rmtree(workdir, ignore_errors=True)
        notes = self.notes + [f"inputs drawn from seed {draw.seed} (--seed {draw.seed} draws the same ones again)"]
        waited = describe(self.turns.since(waits_before))
        if waited:
            notes.append(waited)
        return conclude(stages, metrics, notes, time.monotonic() - started, draw.seed)

    def _stages(self, source: str, workdir: Path, draw: Draw) -> tuple[list[StageResult], Metrics]:
        metrics = Metrics(mask_density=self.density)
        static, facts = check_source(source)
        stages = [static]
        if static.ok and facts.gluon and self.interpreted:
            stages = [StageResult.failed("static", "needs_gpu",
                                         "This kernel is written in Gluon (triton.experimental.gluon), which Triton's "
                                         "CPU interpreter cannot run: verify it with --device cuda on a GPU.")]
        if not stages[0].ok:
            return stages, metrics
        kernel = workdir / "kernel.py"
        kernel.write_text(source)
        timed = not self.interpreted and self.options.time
        child = self._start(kernel, facts, workdir / "check", timed, draw)
        self._child = child
        try:
            stages += self._check(child, timed, draw.suite)
            if timed and all(s.ok for s in stages):
                stages += self._timing(child, metrics, draw.timing_seeds)
            elif child.result.status == "running":
                child.send("stop")  # judged already: let it finish (its last tamper report included)
                child.follow()
        finally:
            self._child = None
            result = child.close()
            self.turns.add([Wait(**r["turn_wait"]) for r in result.records if "turn_wait" in r])
        if result.status == "cancelled" and self.options.cancel is not None and self.options.cancel.is_set():
            raise Cancelled()
        if all(s.ok for s in stages) and result.leftover_processes:
            stages.append(StageResult.failed("integrity", "tampering", "processes started by the candidate were "
                                             "still running after it exited"))
        numbers = next((s for s in stages if s.stage == "numerics"), None)
        if numbers is not None:
            metrics.max_error = numbers.details.get("max_error")
            metrics.error_budget_used = numbers.details.get("error_budget_used")
        return stages, metrics

    def _start(self, kernel: Path, facts: SourceFacts, workdir: Path, timed: bool, draw: Draw) -> Child:
        job = {"kernel": str(kernel.resolve()), "spec": asdict(self.problem.spec), "device": self.problem.device,
               "run_dtype": self.run_dtype, "out_dir": str(workdir.resolve()), "jit_functions": facts.jit_functions,
               "trials": [t.to_dict() for t in draw.suite], "then_time": timed,
               "shape": asdict(self.problem.shape), "seeds": draw.timing_seeds,
               **self.turns.job()}
        env = {"TRITON_INTERPRET": "1"} if self.interpreted else {}
        return Child(job, workdir, self.options.limits, env, self.options.cancel)

    def _check(self, child: Child, timed: bool, suite: list[Trial]) -> list[StageResult]:
        """run → integrity → numerics, judged while the child waits (on a GPU) to be timed."""
        result = _timed(lambda: child.follow(until="checked" if timed else None))
        stages = [run_stage(result, len(suite))]
        if not stages[-1].ok:
            return stages
        # an allocation on the order of the target's scores, or this trial's, whichever is larger
        scores = {t.id: max(self._scores_bytes(), _scores_bytes(t.shape)) for t in suite}
        stages.append(_timed(lambda: probes.integrity(result.records, result.leftover_processes, scores)))
        if not stages[-1].ok:
            return stages
        outputs = {r["trial"]: r["output"] for r in result.records if "output" in r}
        stages.append(_timed(lambda: numerics.judge(suite, outputs, self.spec, DTYPES[self.run_dtype],
                                                    self.problem.device, self.turns)))
        return stages

    def _scores_bytes(self) -> float:
        """An allocation this large can only be (a big share of) the Sq x Skv score matrix: at the target (on CPU
        capped like every trial, else no trial could ever reach it)."""
        return _scores_bytes(self.suite[0].shape)

    # ------------------------------------------------------------------------------------------- timing
    def _timing(self, child: Child, metrics: Metrics, timing_seeds: list[int]) -> list[StageResult]:
        baseline = self.baseline()
        records_before = len(child.result.records)
        # GPU timing never overlaps other timing, this process's or (the GPU's turn) another verification's
        with self.timing_lock, self.turns.take("timing"):
            child.send("time")
            result = _timed(lambda: child.follow())
        stage = run_stage(result, 1)
        if not stage.ok:
            stage.stage = "timing"
            return [stage]
        record = next(r for r in result.records[records_before:] if "timing" in r)
        s = self.problem.shape
        out_bytes = s.batch * s.heads * s.seq_len * s.head_dim * 2
        gpu = probes.gpu_integrity(record["first_call"], record["steady_call"], record["extra_bytes"],
                                   self._scores_bytes(), out_bytes, self.options.require_single_kernel,
                                   record.get("reused_outputs", 0))
        tamper = probes.integrity(result.records[records_before:], False, {})
        _fill_metrics(metrics, record, s.dense_flops() * self.density, baseline)
        for check in (gpu, tamper):
            if not check.ok:
                check.stage = "gpu integrity"
                return [check]
        recheck = _timed(lambda: self._recheck_timed(record["outputs"], record["timed_versions"], timing_seeds))
        if not recheck.ok:
            return [gpu, recheck]
        return [gpu, recheck, timing_stage(record, metrics, baseline)]

    def _recheck_timed(self, paths: list[str], versions: list[int], timing_seeds: list[int]) -> StageResult:
        """The outputs of the last timed calls, against the values their inputs held then (input set i drawn from
        `timing_seeds[i]`)."""
        def trial(i: int, version: int) -> Trial:
            seed = RotatingInputs.seed_of(timing_seeds[i], version)
            return Trial(id=f"timed_{i}", purpose="timed call", shape=self.problem.shape, seed=seed)

        trials = [trial(i, version) for i, version in enumerate(versions)]
        dtype = DTYPES[self.run_dtype]
        result = numerics.judge(trials, {t.id: p for t, p in zip(trials, paths)}, self.spec, dtype,
                                self.problem.device)
        result.stage = "timed outputs"
        if result.ok or result.reason == "cached_output":
            return result
        for i, version in enumerate(versions):  # evidence of replay: the output of values held earlier
            earlier = [trial(i, v) for v in sorted({0, version - 1}) if 0 <= v < version]
            stale = numerics.matching_trial(earlier, paths[i], self.spec, dtype, self.problem.device)
            if stale is not None:
                held = (stale.seed - timing_seeds[i]) // RotatingInputs.VERSION_STRIDE
                return StageResult.failed("timed outputs", "cached_output", (
                    f"While being timed, the output for input set {i} equals the result for the values those "
                    f"same tensors held at an earlier call (version {held} of {version}): the kernel replays "
                    "results keyed on its inputs' identity or pointers. Compute from the input values on every "
                    "call."), **result.details)
        result.message = "Outputs produced while being timed are wrong, although the same kernel passed " \
                         "the checks: " + result.message
        return result


def _free_gpu_bytes() -> int:
    return torch.cuda.mem_get_info()[0]


def _scores_bytes(s: Shape) -> float:
    """An allocation this large at shape `s` can only be (a big share of) the Sq x Skv score matrix."""
    out_bytes = s.batch * s.heads * s.seq_len * s.head_dim * 2
    return max(s.batch * s.heads * s.seq_len * s.kv_seq_len * 2 / 4, 8 * out_bytes)


def _timed(step):
    """Run a stage step and note how long it took on the result (a StageResult or a ChildResult)."""
    started = time.monotonic()
    result = step()
    if isinstance(result, StageResult):
        result.seconds = time.monotonic() - started
    return result


def run_stage(child: ChildResult, trials: int) -> StageResult:
    """Did the candidate's process load and run to the end?"""
    tail = (child.stderr_tail.strip().splitlines() or [""])[-12:]
    details = {"phase": child.phase, "seconds": round(child.seconds, 2), "returncode": child.returncode,
               "stdout_tail": child.stdout_tail[-1500:], "stderr_tail": "\n".join(tail)}
    if child.status in ("ok", "running"):  # running: paused after the checks, waiting to be timed
        return StageResult("run", True, None, f"ran {trials} trial(s) in {child.seconds:.1f}s", details,
                           child.seconds)
    if child.status == "timeout":
        return StageResult("run", False, "timeout", f"no progress during '{child.phase}' within the time limit: a "
                           f"hang (a loop that never ends, a wait on a never-set flag) or far too slow.", details,
                           child.seconds)
    if child.status == "error" and child.error:
        err = child.error
        if err["code"] == "internal":
            raise VerifierInternalError(f"the verifier failed while setting up its child process:\n{err['traceback']}")
        return StageResult("run", False, err["code"], f"during '{child.phase}':\n{err['traceback']}", details,
                           child.seconds)
    why = (" (a segfault or abort: an out-of-bounds pointer?)" if (child.returncode or 0) < 0
           else " without reporting a result (sys.exit or os._exit in the kernel file?)")
    return StageResult("run", False, "crash", f"the process {describe_signal(child.returncode)} during "
                       f"'{child.phase}'{why}.\n" + "\n".join(tail), details, child.seconds)


def _fill_metrics(metrics: Metrics, record: dict, flops: float, baseline: Baseline | None) -> None:
    t = record["timing"]
    metrics.ms, metrics.ms_min, metrics.ms_spread = t["ms"], t["ms_min"], t["spread"]
    metrics.flops = flops
    metrics.tflops = flops / (t["ms"] * 1e-3) / 1e12
    steady = record["steady_call"].get("kernels", [])
    metrics.launches_per_call = len(steady)
    metrics.launch_names = [k["name"][:80] for k in steady]
    metrics.one_time_launches = max(0, len(record["first_call"].get("kernels", [])) - len(steady))
    metrics.extra_memory_bytes = record["extra_bytes"]
    metrics.compiled = record.get("compiled", [])
    if baseline is not None:
        metrics.flex_ms, metrics.sdpa_ms, metrics.peak_tflops = baseline.flex_ms, baseline.sdpa_ms, baseline.peak_tflops
        if baseline.flex_ms:
            metrics.flex_tflops = flops / (baseline.flex_ms * 1e-3) / 1e12
            metrics.ratio_to_flex = baseline.flex_ms / t["ms"]
        if baseline.peak_tflops:
            metrics.fraction_of_peak = metrics.tflops / baseline.peak_tflops


def timing_stage(record: dict, metrics: Metrics, baseline: Baseline | None) -> StageResult:
    t = record["timing"]
    details = {"timing": t, "gpu": record.get("gpu")}
    if not wall_clock_agrees(t["ms"], t["wall_ms"]):
        return StageResult.failed("timing", "side_stream",
                                  f"events on the caller's stream measured {t['ms']:.3f} ms per call but a "
                                  f"synchronised wall clock measured {t['wall_ms']:.3f} ms: work ran where the "
                                  f"caller's stream cannot see it. What other processes' work on this GPU added to a "
                                  f"control kernel of the call's length was taken off; if the GPU was shared, verify "
                                  f"again on an idle one.", **details)
    if baseline and baseline.peak_tflops and metrics.tflops > baseline.peak_tflops * IMPLAUSIBLE_MARGIN:
        return StageResult.failed("timing", "implausible_speed",
                                  f"{metrics.tflops:.0f} TFLOP/s exceeds this GPU's measured matmul peak of "
                                  f"{baseline.peak_tflops:.0f} TFLOP/s: the measurement cannot be real.", **details)
    ratio = f", {metrics.ratio_to_flex:.2f}x flex" if metrics.ratio_to_flex else ""
    return StageResult.passed("timing", f"{t['ms']:.3f} ms, {metrics.tflops:.1f} TFLOP/s{ratio}", **details)
