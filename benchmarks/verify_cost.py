"""What one verification costs, stage by stage: a built-in kernel for each spec judged by the verifier as
`kgen attention` judges every attempt, on a GPU with and without the trial past the index limits
(verifier.past_limits), or on the CPU under Triton's interpreter. Timing is off (it is the same for every
candidate); a cold first verification of a spec compiles, so each case runs once cold and is then measured warm,
--repeat times. Every verification draws fresh inputs (its own seed), so the worst error over them, as a fraction of
the verifier's tolerance, says how wide the margin is of a correct kernel at that shape and dtype.

    python benchmarks/verify_cost.py --specs noop,key_padding,dilated_causal --shape 2x16x2048x128
    python benchmarks/verify_cost.py --device cpu --specs noop --shape 1x2x64x32 --past-limits off
    python benchmarks/verify_cost.py --specs noop,softcap --shape 2x16x8192x128 --past-limits off --repeat 3

Prints one table (seconds); with --out, the rows as JSON too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.builtin.lower import lower_spec  # noqa: E402
from agent.builtin.template import KernelConfig, render_kernel  # noqa: E402
from agent.proposers import first_configs  # noqa: E402
from benchmarks.bench import parse_shape  # noqa: E402
from verifier.problem import Problem  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402
from verifier.verify import Verifier, VerifyOptions  # noqa: E402


@dataclass
class Row:
    spec: str
    config: str
    past_limits: bool
    verdict: str
    # each of these three is the warm verifications' mean, so that a stage's seconds is part of the whole's
    seconds: float  # the whole verification
    child: float  # the candidate's process: import, first call, every trial
    numerics: float  # the verifier's references and comparisons (the every-row check included)
    trials: int
    largest: str  # the suite's largest trial
    seeds: list[int]  # of every verification, the cold one first
    error_budget_used: float | None  # the worst error over them all / the verifier's tolerance (None if rejected)


def judge(spec_path: Path, shape, device: str, config: str | None, past_limits: bool, repeat: int = 1) -> Row:
    spec = load_spec(SpecFiles(str(spec_path)))
    problem = Problem(SpecFiles(str(spec_path.resolve())), shape, "bf16", device)
    verifier = Verifier(problem, VerifyOptions(time=False, baseline=False, past_limits=past_limits), spec=spec)
    cfg = KernelConfig.from_label(config) if config else first_configs(shape.head_dim, device == "cpu")[0]
    source = render_kernel(spec.name, lower_spec(spec), cfg)
    verdicts = [verifier.verify(source)]  # cold: compiles
    seconds = []
    for _ in range(repeat):
        started = time.monotonic()
        verdicts.append(verifier.verify(source))
        seconds.append(time.monotonic() - started)
    verdict = next((v for v in verdicts if not v.accepted), verdicts[-1])
    warm = verdicts[1:]
    largest = max(verifier.suite, key=lambda t: t.shape.batch * t.shape.heads * t.shape.seq_len)
    budgets = [v.metrics.error_budget_used for v in verdicts]
    return Row(spec=spec.name, config=cfg.label(), past_limits=any(t.sample for t in verifier.suite),
               verdict="accepted" if verdict.accepted else f"{verdict.reason}: {verdict.message[:80]}",
               seconds=mean(seconds), child=mean([stage_seconds(v, "run") for v in warm]),
               numerics=mean([stage_seconds(v, "numerics") for v in warm]), trials=len(verifier.suite),
               largest=largest.shape.label(), seeds=[v.seed for v in verdicts],
               error_budget_used=max(budgets) if verdict.accepted else None)


def stage_seconds(verdict, name: str) -> float:
    """A stage's seconds (the run stage's: the candidate's process); 0 if the verification stopped before it."""
    return next((s.seconds for s in verdict.stages if s.stage == name), 0.0)


def print_table(rows: list[Row]) -> None:
    print("| spec | config | past-limits trial | verdict | seconds | child | numerics | trials | largest trial | "
          "verifications | worst error / tolerance |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        budget = "-" if r.error_budget_used is None else f"{r.error_budget_used:.1%}"
        print(f"| {r.spec} | {r.config} | {'yes' if r.past_limits else 'no'} | {r.verdict} | {r.seconds:.2f} | "
              f"{r.child:.2f} | {r.numerics:.2f} | {r.trials} | {r.largest} | {len(r.seeds)} | {budget} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="noop,key_padding,dilated_causal")
    parser.add_argument("--spec-dir", default=str(ROOT / "examples" / "specs"))
    parser.add_argument("--shape", default="2x16x2048x128", help="BxHxNxD (BxH/HKVxNxD with GQA)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--config", help="the built-in config to judge (default: the search's first)")
    parser.add_argument("--past-limits", default="both", choices=("both", "on", "off"),
                        help="with the trial past the index limits, without it, or both (GPU only)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="warm verifications of each case after the cold one, each with fresh inputs")
    parser.add_argument("--out", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    shape = parse_shape(args.shape)
    settings = {"both": [False, True], "on": [True], "off": [False]}[args.past_limits]
    rows = []
    for name in args.specs.split(","):
        for past_limits in settings:
            rows.append(judge(Path(args.spec_dir) / f"{name}.py", shape, args.device, args.config, past_limits,
                              args.repeat))
            print(f"{name} past-limits={past_limits}: {rows[-1].seconds:.1f} s, {rows[-1].verdict}", flush=True)
            if args.out:
                args.out.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print_table(rows)
    return 0 if all(r.verdict == "accepted" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
