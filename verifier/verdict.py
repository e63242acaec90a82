"""What the verifier says about one candidate: stage results in order, one reason code, metrics."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Every way a candidate can be rejected, with the one-line meaning a model or a person reads.
REASONS: dict[str, str] = {
    # static and loading
    "syntax_error": "the source does not parse as Python",
    "missing_entry_point": "no function `attention(q, k, v, *, scale=None, **buffers)` is defined",
    "no_triton_kernel": "no @triton.jit function is defined: the work must happen in a Triton kernel",
    "needs_gpu": "the kernel is written in Gluon, which only runs on a GPU (no CPU interpreter)",
    "compile_error": "the module failed to import or a Triton kernel failed to compile",
    "runtime_error": "the call raised an exception",
    "crash": "the process died (segfault, abort, illegal memory access)",
    "out_of_memory": "the GPU ran out of memory, in the call or in the verifier's own check of it",
    "timeout": "compiling or running took longer than the time limit (a hang?)",
    # numerics
    "wrong_output": "the output differs from the reference beyond tolerance",
    "nan_output": "the output holds NaN or inf where the reference is finite",
    "truncated_work": "correct on unit-scale inputs, wrong on large or adversarial logits: work was skipped",
    # anti-cheat
    "cached_output": "the output does not follow the inputs (remembered or input-independent)",
    "input_mutated": "q, k, v or a buffer was changed by the call",
    "output_aliases_input": "the output shares memory with an input or an earlier output",
    "forbidden_call": "attention math ran outside the candidate's own Triton kernels",
    "side_stream": "work ran on a stream other than the caller's current stream",
    "out_of_bounds_write": "memory next to the output was written",
    "snooping": "the candidate looked for the verifier's reference",
    "nondeterministic": "identical calls gave different outputs",
    "uninitialized_output": "some output elements were never written",
    "bad_output": "the output is not a plain contiguous tensor of q's shape, dtype and device",
    "tampering": "the candidate patched what measures it, left threads or processes behind, or hid errors",
    "implausible_speed": "the measured speed exceeds what the GPU can do: the timing cannot be real",
    "materialized_scores": "the call allocated memory on the order of Sq x Skv: scores were materialized",
    "multiple_kernels": "more than one kernel launch per call where a single kernel was required",
}


@dataclass
class StageResult:
    """One stage's outcome. `message` is written for the model that must act on it."""

    stage: str
    ok: bool
    reason: str | None = None
    message: str = ""
    details: dict = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def passed(cls, stage: str, message: str = "", **details) -> "StageResult":
        return cls(stage=stage, ok=True, message=message, details=details)

    @classmethod
    def failed(cls, stage: str, reason: str, message: str, **details) -> "StageResult":
        assert reason in REASONS, reason
        return cls(stage=stage, ok=False, reason=reason, message=message, details=details)


@dataclass
class Metrics:
    """Measured facts about an accepted kernel (None where not measured, e.g. on CPU)."""

    max_error: float | None = None
    error_budget_used: float | None = None  # worst error / tolerance over the suite (<= 1 passes)
    ms: float | None = None  # median per call
    ms_min: float | None = None
    ms_spread: float | None = None  # (p90 - p10) / median
    tflops: float | None = None  # over unmasked work
    flex_ms: float | None = None
    flex_tflops: float | None = None
    ratio_to_flex: float | None = None
    sdpa_ms: float | None = None
    peak_tflops: float | None = None  # measured dense bf16/fp16 matmul rate on this GPU
    fraction_of_peak: float | None = None
    launches_per_call: int | None = None
    launch_names: list[str] = field(default_factory=list)
    one_time_launches: int | None = None  # first call only (e.g. a cached block map)
    extra_memory_bytes: int | None = None  # allocated during a call beyond the output
    mask_density: float | None = None
    flops: float | None = None
    # per compiled kernel: registers a thread, spilled bytes (and spill instructions in the matmul loop), shared
    # memory, and whether ptxas serialized its wgmmas
    compiled: list[dict] = field(default_factory=list)


@dataclass
class Verdict:
    accepted: bool
    reason: str | None
    message: str
    stages: list[StageResult] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    seed: int | None = None  # of every input this verification drew (`--seed` draws them again)

    @property
    def failed_stage(self) -> StageResult | None:
        return next((s for s in self.stages if not s.ok), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Verdict":
        stages = [StageResult(**s) for s in data.get("stages", [])]
        metrics = Metrics(**data.get("metrics", {}))
        rest = {k: v for k, v in data.items() if k not in ("stages", "metrics")}
        return cls(stages=stages, metrics=metrics, **rest)


def conclude(stages: list[StageResult], metrics: Metrics, notes: list[str], seconds: float,
             seed: int | None = None) -> Verdict:
    """The verdict is the first failed stage's, or accepted when every stage passed."""
    failed = next((s for s in stages if not s.ok), None)
    if failed is None:
        return Verdict(True, None, "accepted", stages, metrics, notes, seconds, seed)
    return Verdict(False, failed.reason, failed.message, stages, metrics, notes, seconds, seed)
