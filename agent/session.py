"""Assemble a search from the user's settings: proposers, model client, verifier, run directory.

Everything that can be wrong with the settings (an unreachable endpoint, a refused key, a spec the built-in
proposer cannot lower when there is no model) is found here, in seconds, before any budget is spent.
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import triton

from agent.builtin.lower import LoweringError
from agent.llm import ChatClient, ConfigError, ModelConfig
from agent.loop import Search, SearchConfig
from agent.proposers import ModelProposer, TemplateProposer
from agent.records import RunRecord
from agent.rundir import RunDir, utc_now
from verifier.problem import Problem
from verifier.sandbox import Limits
from verifier.spec import Spec
from verifier.verify import Verifier, VerifyOptions


class SessionError(Exception):
    """Settings that cannot work; the message says what to change (exit code 2)."""


@dataclass
class Session:
    problem: Problem
    spec: Spec
    verifier: Verifier
    search: Search
    rundir: RunDir
    record: RunRecord
    model_config: ModelConfig | None
    notes: list[str] = field(default_factory=list)


def start_session(problem: Problem, spec: Spec, model_config: ModelConfig | None, search_config: SearchConfig, *,
                  runs_dir: Path, samples: int = 2, stall_after: int = 4, builtin: bool = True,
                  limits: Limits | None = None, baseline: bool = True, seed: int | None = None,
                  command: list[str] | None = None) -> Session:
    notes: list[str] = []
    proposers = []
    if builtin:
        try:
            proposers.append(TemplateProposer(spec, problem))
        except LoweringError as e:
            if model_config is None:
                raise SessionError(f"{e} Without a model there is nothing else to search with: pass --model "
                                   f"(and --base-url) to let a model write the kernel.") from None
            notes.append(f"built-in proposer unavailable, the model searches alone: {e}")
    if model_config is not None:
        try:
            client = ChatClient(model_config)
            client.preflight()
        except ConfigError as e:
            raise SessionError(str(e)) from None
        proposers += [ModelProposer(client, lineage=i + 1, stall_after=stall_after) for i in range(samples)]
    if not proposers:
        raise SessionError("nothing to search with: --no-builtin needs a model (--model).")
    verifier = Verifier(problem, VerifyOptions(limits=limits or Limits(), baseline=baseline, seed=seed),
                        spec=spec)
    rundir = RunDir.create(runs_dir, spec.name)
    config = {"search": asdict(search_config), "samples": samples, "stall_after": stall_after, "builtin": builtin,
              "limits": asdict(verifier.options.limits), "baseline": baseline, "seed": seed,
              "model": model_config.public() if model_config else None}
    record = RunRecord(id=rundir.id, command=list(command or sys.argv), problem=problem.to_dict(),
                       spec={**spec.describe(), "source": spec.source}, config=config, environment=environment(problem),
                       started_at=utc_now(), notes=notes + verifier.notes + [_seed_note(seed)])
    rundir.write_record(record)
    search = Search(verifier, rundir, record, proposers, search_config)
    return Session(problem, spec, verifier, search, rundir, record, model_config, notes)


def _seed_note(seed: int | None) -> str:
    if seed is None:
        return "each verification draws its inputs from a fresh seed, named in its report (--seed N repeats one)"
    return f"every verification draws its inputs from seed {seed} (--seed)"


def environment(problem: Problem) -> dict:
    return {"device": problem.device, "gpu": torch.cuda.get_device_name() if problem.device == "cuda" else None,
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "host": platform.node(), "pid": os.getpid()}
