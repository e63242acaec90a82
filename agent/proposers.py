"""Where candidates come from, behind one small interface: `propose(context)` and `observe(attempt)`.

- TemplateProposer: the built-in kernel (lowered spec + FlashAttention-2 template) over a search of block
  sizes, warps and stages. It knows when it has nothing left to try.
- ModelProposer: one lineage of a reasoning model refining its own kernel with the verifier's feedback;
  when it stalls it restarts from the best verified kernel so far.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import torch
import triton

import prompts
from agent.builtin.lower import LoweringError, lower_spec
from agent.builtin.template import KernelConfig, render_kernel
from agent.extract import FormatError, extract_kernel
from agent.llm import ChatClient
from agent.records import ACCEPTED, NO_KERNEL, Attempt, Candidate, describe_speed
from verifier.compiled import describe as describe_compiled
from verifier.problem import Problem
from verifier.spec import Spec
from verifier.verdict import REASONS


@dataclass
class SearchContext:
    """What a proposer may know about the search when it proposes."""

    problem: Problem
    spec: Spec
    gpu: str | None
    density: float  # share of the scores the mask keeps
    best: Attempt | None  # the fastest verified kernel so far, from any lineage


class Proposer(Protocol):
    origin: str
    lineage: int

    def propose(self, context: SearchContext) -> Candidate | None:
        """The next candidate, or None when there is nothing left to try."""

    def observe(self, attempt: Attempt) -> None:
        """Learn from the verdict on a candidate this proposer made."""


# --------------------------------------------------------------------------------------------- built-in
def is_hopper() -> bool:
    """Tensor descriptors and warp specialization need compute capability 9.0 or newer."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def has_wgmma() -> bool:
    """The Gluon kernel's warpgroup matmuls exist on sm_90 (H100, H200) only."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def search_space(head_dim: int, interpreted: bool, hopper: bool = False, gluon: bool = False) -> list[KernelConfig]:
    """Configs to try first, most promising first (by head dim); refinements (stages) come from results.

    On Hopper, the configs that won somewhere in the H100 config sweeps (benchmarks/results,
    benchmarks/MEASURED.md): tensor descriptors, which also free the ~100 registers that pointer tiles cost; at
    D=128 128x128 tiles with 3 stages, 128x64 for masks that cut many blocks, 64x64 with 4 warps for masks with fine
    structure (two blocks share an SM); at D=64 64x128 tiles with 4 warps and 2 stages for dense, causal and dilated
    specs, plain pointer loads with 64x64 or 128x64 tiles for sliding windows and key padding. Warp specialization
    is left out: Triton 3.6 compiles these kernels with and without it to the same code. Elsewhere a wider space,
    since nothing was measured. With `gluon` (the GPU runs the Gluon kernel: sm_90), Hopper also tries the
    warp-specialized Gluon kernel (a loader and two consumer warpgroups) first at D=128, where it beat the Triton
    kernels by 1-11% on noop, rel_pos and alibi, and by 9-15% on causal and key padding at 2048 keys (persistent,
    reading the block map); level on dilated causal, ahead on sliding windows (its two consumers skip, or run with
    no mask, the blocks their own rows keep none of, or all of). It is tried persistent (one program
    per SM, looping over query tiles: 1-6% faster on dense specs at 2048 keys) and with one program per tile (level,
    or 3-7% faster on rel_pos and softcap at 8192 keys), since neither won everywhere. 128-key blocks with Q left in
    shared memory (two stages fit) come first: since a stage's K goes back to the loader a block before its V, on an
    H200 they beat 64-key blocks on plain attention at 8192 keys (1.72-1.82 ms against 1.82-1.89), key padding
    (0.78-0.80 against 0.81-0.83) and causal, though they spill a little with a block map; 64-key blocks stay ahead
    on rel_pos and alibi (7-10%), and are tried next. At D=64 it comes last, with 128-key blocks: 2-3% ahead of the
    Triton kernels on noop, causal and key padding, 13-70% behind on the others. Its 192-row tiles (three consumer
    warpgroups, FlashAttention-4's sm_90 tile at D<=64; 64-key blocks, since 128 spill) are left out: on an H200 at
    B4 H16 N4096 D64 they were 7-10% slower than the 128-row kernel on noop and 5-17% behind the Triton kernels
    on alibi, rel_pos and softcap."""
    if interpreted:  # the interpreter ignores warps and stages and cannot time: one config is the search
        return [KernelConfig(32, 32, 4, 2)]
    if hopper and head_dim % 8 == 0 and head_dim <= 128:  # descriptors need 16-byte aligned rows
        warp_specialized = [KernelConfig(128, 128, 4, 2, gluon=True, persistent=True),
                            KernelConfig(128, 128, 4, 2, gluon=True),
                            KernelConfig(128, 64, 4, 4, gluon=True, persistent=True),
                            KernelConfig(128, 64, 4, 4, gluon=True)] if gluon and head_dim == 128 else []
        if head_dim <= 64:
            wide_gluon = [KernelConfig(128, 128, 4, 3, gluon=True, persistent=True)] if gluon and head_dim == 64 else []
            return [KernelConfig(64, 128, 4, 2, tma=True), KernelConfig(128, 64, 8, 3), KernelConfig(64, 64, 4, 3),
                    *wide_gluon]
        return [*warp_specialized, KernelConfig(128, 128, 8, 3, tma=True), KernelConfig(128, 64, 8, 3, tma=True),
                KernelConfig(64, 64, 4, 3, tma=True)]
    if head_dim <= 64:
        base = [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 3)]
    elif head_dim <= 128:
        base = [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 64, 4, 2)]
    else:
        base = [(64, 64, 4, 2), (64, 32, 4, 2), (128, 32, 8, 2), (32, 64, 4, 2)]
    return [KernelConfig(*c) for c in base]


def first_configs(head_dim: int, interpreted: bool) -> list[KernelConfig]:
    """The search space on the GPU at hand (the Gluon kernel only where it can run)."""
    return search_space(head_dim, interpreted, hopper=is_hopper(), gluon=has_wgmma())


@dataclass
class ConfigSearch:
    """The built-in config search, on its own: the first configs in order, then (with `refine`) one-stage
    neighbours of the fastest config that fit the GPU, until a round brings nothing new. The proposer and the
    benchmark both drive it, so they search alike."""

    queue: list[KernelConfig]
    refine: bool = True
    fits: Callable[[KernelConfig], bool] = lambda cfg: True
    tried: dict[KernelConfig, float | None] = field(default_factory=dict)  # config -> ms (None: failed, untimed)

    def next(self) -> KernelConfig | None:
        """The next config to try, or None when the search is over."""
        while self.queue:
            cfg = self.queue.pop(0)
            if cfg not in self.tried:
                self.tried[cfg] = None
                return cfg
        return None

    def record(self, cfg: KernelConfig, ms: float | None) -> None:
        """A config's time (None: it failed or was not timed); the last first config's result starts refining."""
        self.tried[cfg] = ms
        self.queue = [c for c in self.queue if c not in self.tried]
        if not self.queue and self.refine:
            self.queue = refinements(self.tried, self.fits)


class TemplateProposer:
    origin = "builtin"

    def __init__(self, spec: Spec, problem: Problem, lineage: int = 0):
        self.lineage = lineage
        self.spec_name = spec.name
        self.lowered = lower_spec(spec)  # LoweringError: the caller decides whether the run can go on
        interpreted = problem.device == "cpu"
        # the interpreter cannot time, so there is nothing to refine from
        self.search = ConfigSearch(first_configs(problem.shape.head_dim, interpreted),
                                   refine=not interpreted, fits=shared_memory_check(problem.shape.head_dim))

    def propose(self, context: SearchContext) -> Candidate | None:
        cfg = self.search.next()
        if cfg is None:
            return None
        return Candidate(origin=self.origin, lineage=self.lineage, label=cfg.label(),
                         source=render_kernel(self.spec_name, self.lowered, cfg), config=cfg.to_dict())

    def observe(self, attempt: Attempt) -> None:
        self.search.record(KernelConfig(**attempt.candidate.config),
                           attempt.ms if attempt.status == ACCEPTED else None)


def refinements(tried: dict[KernelConfig, float | None],
                fits: Callable[[KernelConfig], bool] = lambda cfg: True) -> list[KernelConfig]:
    """Neighbours of the fastest config so far: one more or one fewer pipeline stage.

    The warp count stays: one warpgroup per 64 query rows is what Hopper's tensor cores want, and on the H100
    the other count lost at every spec and shape (2x slower for 128x128 tiles with 4 warps)."""
    timed = [(ms, c) for c, ms in tried.items() if ms is not None]
    if not timed:
        return []
    best = min(timed, key=lambda t: t[0])[1]
    return [c for c in stage_neighbours(best) if c not in tried and fits(c)]


def descriptor_shared_bytes(cfg: KernelConfig, head_dim: int, element_bytes: int = 2) -> int | None:
    """Shared memory a tensor-descriptor config stages: the Q tile and `num_stages` K and V tiles (what Triton 3.6
    allocates on sm_90, to within a few hundred bytes), and for the Gluon kernel an output tile as well. None for
    pointer loads, which Triton stages differently. The Gluon kernel's own `_q_slots` (a standalone file: it cannot
    call this) adds a second Q tile only where that still fits, so this is the least a config needs."""
    if not (cfg.tma or cfg.gluon):
        return None
    padded = triton.next_power_of_2(max(head_dim, 16))
    query_tiles = 2 if cfg.gluon else 1  # the Gluon kernel's output tile leaves while the next tile's Q arrives
    return element_bytes * padded * (query_tiles * cfg.block_m + 2 * cfg.num_stages * cfg.block_n)


def shared_memory_check(head_dim: int) -> Callable[[KernelConfig], bool]:
    """Whether a config's staging fits this GPU's shared memory per block (a 4th stage of 128x128 D=128 tiles
    does not on an H100: trying it costs a compile and a rejected attempt). Anything passes where it cannot be
    known: no GPU, or pointer loads."""
    props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    limit = getattr(props, "shared_memory_per_block_optin", None)  # ROCm builds may not report it

    def fits(cfg: KernelConfig) -> bool:
        needed = descriptor_shared_bytes(cfg, head_dim)
        return limit is None or needed is None or needed <= limit
    return fits


def stage_neighbours(cfg: KernelConfig) -> list[KernelConfig]:
    """The same config with one pipeline stage fewer and one more (as few as the kernel allows)."""
    return [replace(cfg, num_stages=s) for s in (cfg.num_stages - 1, cfg.num_stages + 1)
            if cfg.fewest_stages <= s <= 5]


# ------------------------------------------------------------------------------------------------ model
class ModelProposer:
    origin = "model"

    def __init__(self, client: ChatClient, lineage: int, stall_after: int = 4):
        self.client, self.lineage, self.stall_after = client, lineage, stall_after
        self.previous: Attempt | None = None  # the attempt the next prompt gives feedback on
        self.history: list[dict] = []  # one line per attempt of this lineage since its last restart
        self.best_ms: float | None = None
        self.since_improvement = 0
        self.round = 0

    def propose(self, context: SearchContext) -> Candidate:
        self.round += 1
        messages = [{"role": "system", "content": prompts.render("system")},
                    {"role": "user", "content": first_prompt(context)}]
        if self.previous is not None:  # the conversation carries the last visible answer, never reasoning
            answer = self.previous.candidate.answer
            messages += [{"role": "assistant", "content": answer.content if answer else ""},
                         {"role": "user", "content": feedback_prompt(self.previous, self.history[:-1], context)}]
        answer = self.client.complete(messages)  # LLMError / ConfigError: the loop decides
        candidate = Candidate(origin=self.origin, lineage=self.lineage,
                              label=f"lineage {self.lineage} round {self.round}",
                              parent=self.previous.number if self.previous else None, messages=messages, answer=answer)
        try:
            candidate.source = extract_kernel(answer)
        except FormatError as e:
            candidate.format_error = e.feedback
        return candidate

    def observe(self, attempt: Attempt) -> None:
        self.previous = attempt
        self.history.append({"number": attempt.number, "outcome": attempt.summary()})
        if attempt.status == ACCEPTED and (self.best_ms is None or (attempt.ms or 0) < self.best_ms):
            self.best_ms, self.since_improvement = attempt.ms, 0
        else:
            self.since_improvement += 1
        if self.since_improvement >= self.stall_after:
            self.restart()

    def restart(self) -> None:
        """Forget this lineage's conversation: the next prompt starts from the best kernel so far."""
        self.previous, self.history, self.since_improvement, self.best_ms = None, [], 0, None


def first_prompt(context: SearchContext) -> str:
    problem, spec, best = context.problem, context.spec, context.best
    seed = None
    if best is not None:
        seed = {"kernel": best.candidate.source, "summary": f"{describe_speed(best.verdict)} ({best.candidate.label})",
                "compiled": [describe_compiled(k) for k in best.verdict.metrics.compiled]}
    buffers = [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
               for n, t in spec.buffers.items()]
    return prompts.render("first", spec_source=spec.source, buffers=buffers, shape=problem.shape, dtype=problem.dtype,
                          device=problem.device, gpu=context.gpu, triton_version=triton.__version__,
                          torch_version=torch.__version__.split("+")[0], density=context.density, seed=seed,
                          linear_bias=adds_linear_bias(spec))


def adds_linear_bias(spec: Spec) -> bool:
    """Whether the spec's score_mod is score + a bias linear in q_idx and kv_idx (what the lowering proves; a spec
    it cannot lower says nothing)."""
    if spec.score_mod is None:
        return False
    try:
        return lower_spec(spec).score.linear_bias
    except LoweringError:
        return False


def feedback_prompt(attempt: Attempt, history: list[dict], context: SearchContext) -> str:
    """What the verifier said about `attempt`, and what to try next."""
    if attempt.status == NO_KERNEL:
        return prompts.render("format_error", feedback=attempt.candidate.format_error)
    verdict = attempt.verdict
    best = context.best
    best_summary = (f"{describe_speed(best.verdict)} (attempt {best.number}, {best.candidate.label})"
                    if best is not None and best.number != attempt.number else None)
    stage = verdict.failed_stage
    return prompts.render("feedback", accepted=attempt.status == ACCEPTED, summary=describe_speed(verdict),
                          best_summary=best_summary, metrics=verdict.metrics, history=history,
                          hopper=context.problem.device == "cuda" and is_hopper(),
                          stage=stage.stage if stage else None, reason=verdict.reason,
                          reason_meaning=REASONS.get(verdict.reason or "", ""), message=_trim(verdict.message))


def _trim(text: str, limit: int = 3000) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n[...]\n" + text[-limit // 2:]
