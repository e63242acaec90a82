"""The data of a search: candidates, attempts and the run record. Plain dataclasses, JSON as they are."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from agent.llm import Answer
from verifier.verdict import Verdict

# How an attempt ended.
ACCEPTED, REJECTED, NO_KERNEL, CANCELLED, FAILED = "accepted", "rejected", "no_kernel", "cancelled", "failed"


@dataclass
class Candidate:
    """A kernel and where it came from (or, for a model answer without a usable kernel, why not)."""

    origin: str  # builtin | model
    lineage: int
    label: str  # what produced it: a template config, or a model round
    source: str | None = None  # the kernel file; None when the answer held no usable kernel
    parent: int | None = None  # the attempt this one refines
    messages: list[dict] | None = None  # the prompt as sent (model only)
    answer: Answer | None = None
    format_error: str | None = None  # why no kernel could be taken from the answer (model only)
    config: dict | None = None  # template parameters (builtin only)


@dataclass
class Attempt:
    number: int
    candidate: Candidate
    status: str  # accepted | rejected | no_kernel | cancelled | failed
    started_s: float  # seconds since the run started
    finished_s: float
    verdict: Verdict | None = None
    error: str | None = None  # a proposer failure (the model endpoint gave up, say)

    @property
    def ms(self) -> float | None:
        return self.verdict.metrics.ms if self.verdict else None

    def summary(self) -> str:
        """One line a person or a model reads: what happened to this attempt."""
        if self.status == ACCEPTED:
            return "accepted, " + describe_speed(self.verdict)
        if self.status == REJECTED:
            first = (self.verdict.message.splitlines() or [""])[0][:160]
            return f"rejected: {self.verdict.reason} ({first})"
        if self.status == NO_KERNEL:
            return f"no usable kernel in the answer ({(self.candidate.format_error or '')[:120]})"
        return f"{self.status}: {self.error or ''}"[:200]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["verdict"] = self.verdict.to_dict() if self.verdict else None
        return data


def describe_speed(verdict: Verdict | None) -> str:
    m = verdict.metrics if verdict else None
    if m is None or m.ms is None:
        return "not timed (no GPU)"
    flex = f", {m.ratio_to_flex:.2f}x flex" if m.ratio_to_flex else ""
    return f"{m.ms:.3f} ms, {m.tflops:.1f} TFLOP/s{flex}"


@dataclass
class RunRecord:
    """run.json: what a person needs to know about a run without reading its attempts."""

    id: str
    command: list[str]
    problem: dict
    spec: dict
    config: dict  # search and model settings, never a key
    environment: dict  # device, GPU, versions, host, pid
    started_at: str
    status: str = "running"  # running | finished | interrupted | failed
    stop_reason: str = ""
    finished_at: str | None = None
    attempts: int = 0
    verified: int = 0
    best: dict | None = None  # attempt number, label, origin, ms, tflops, ratio_to_flex, path
    baseline: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)
