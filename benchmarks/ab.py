"""Versions of the built-in templates, timed side by side in one process (CUDA): an A/B test of a change.

`--base DIR` is another copy of the repository (say `git worktree add /tmp/base HEAD`), whose
`agent/builtin` templates render the "before" kernels; this checkout's render the "after" ones. `--base` may
be given more than once, as NAME=DIR, to time several variants against each other in the same run. For every
case, all kernels are checked against the float64 reference on the case's inputs, then timed in turn,
`--reps` times each, alternating, `--seconds` a call each (the benchmark's timing: CUDA events, L2 flushed,
three input sets rotated). Alternating in one process keeps the GPU's clock and power state the same for both,
which separate runs do not: run to run a kernel's time moves by several percent. `--host` also times the host's
side of a call (the Python wrapper and the launch, the GPU not waited for): where it is longer than the kernel,
calls in a row wait on the host, not on the GPU. `--layout` hands the kernels q, k and v in one of the memory
layouts the verifier's suite tries (bshd: a model's q.transpose(1, 2); strided: views into wider memory), the
values the same, where the benchmark times contiguous ones.

    python benchmarks/ab.py --base /tmp/base --case "rel_pos 2x16x8192x128 BM128 BN64 w4 s3 gluon persistent"
    python benchmarks/ab.py --base head=/tmp/head --base try2=/tmp/try2 --case "noop 8x16x2048x128 BM128 BN64 w4 s3 gluon"
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.builtin.lower import lower_spec  # noqa: E402
from agent.builtin.template import KernelConfig, render_kernel  # noqa: E402
from benchmarks.bench import load_module, parse_shape, target_inputs, time_on_sets  # noqa: E402
from verifier.child import laid_out  # noqa: E402
from verifier.problem import DTYPES  # noqa: E402
from verifier.spec import SpecFiles, load_spec  # noqa: E402
from verifier.suite import LAYOUTS  # noqa: E402


@dataclass
class Case:
    spec: str  # a name in --spec-dir
    shape: str  # BxHxNxD
    config: str  # a config label

    @classmethod
    def parse(cls, text: str) -> "Case":
        spec, shape, config = text.split(maxsplit=2)
        parse_shape(shape)  # a bad shape or config label fails here, before any GPU time
        KernelConfig.from_label(config)
        return cls(spec, shape, config)


@dataclass
class Result:
    case: Case
    error_ratio: dict = field(default_factory=dict)  # version -> worst error / tolerance (<= 1 is correct)
    ms: dict = field(default_factory=dict)  # version -> [ms of each repetition]
    host_us: dict = field(default_factory=dict)  # version -> [host microseconds a call, each repetition] (--host)
    error: str = ""


def base_renderer(base: Path, name: str = "base"):
    """render_kernel from the other copy's template module: it loads the templates beside it."""
    path = base / "agent" / "builtin" / "template.py"
    module_spec = importlib.util.spec_from_file_location(f"kgen_ab_{name}_template", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up there
    module_spec.loader.exec_module(module)
    return module.render_kernel


def host_us_per_call(call, n_sets: int, calls: int = 300) -> float:
    """The host's time per call (the wrapper and the launch), not waiting for the GPU between calls."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(calls):
        call(i % n_sets)
    elapsed = time.perf_counter() - started
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def in_layout(sets: list, layout: str) -> list:
    """Each input set's q, k and v with the same values in `layout` (a key of verifier.suite.LAYOUTS), laid out as
    the verifier's trial of that layout lays them out (the guards it keeps around them are dropped)."""
    return [[laid_out(t, layout, name)[0] for t, name in zip(inputs, "qkv")] for inputs in sets]


def run_case(case: Case, renderers: dict, spec_dir: Path, dtype, reps: int, seconds: float, workdir: Path,
             host: bool = False, layout: str = "contiguous") -> Result:
    result = Result(case)
    spec = load_spec(SpecFiles(str(spec_dir / f"{case.spec}.py")))
    shape = parse_shape(case.shape)
    cfg = KernelConfig.from_label(case.config)
    sets, buffers, check = target_inputs(spec, shape, dtype)  # the benchmark's inputs, seeds and check
    sets = in_layout(sets, layout)
    lowered = lower_spec(spec)
    kernels = {}
    for version, render in renderers.items():
        fn = load_module(render(spec.name, lowered, cfg), workdir).attention
        result.error_ratio[version] = round(check(fn(*sets[0], **buffers)), 3)
        if result.error_ratio[version] > 1.0:
            result.error = f"{version}: wrong output ({result.error_ratio[version]}x tolerance)"
            return result
        kernels[version] = fn
    for _ in range(reps):
        for version, fn in kernels.items():
            ms = time_on_sets(sets, functools.partial(fn, **buffers), target_s=seconds)
            result.ms.setdefault(version, []).append(round(ms, 4))
            if host:
                us = host_us_per_call(lambda i: fn(*sets[i], **buffers), len(sets))
                result.host_us.setdefault(version, []).append(round(us, 1))
    return result


def print_table(results: list[Result], versions: list[str]) -> None:
    """One row a case: each version's times, then each later version's median time over the first's. Medians, not
    totals: one slow repetition (a clock dip, another process) moved a ratio of totals by 2% where every other
    repetition agreed (fortieth session, causal N2048: 0.298 ms among 0.270s)."""
    first, later = versions[0], versions[1:]
    print("| case | config | " + " | ".join(f"{v} ms" for v in versions) + " | "
          + " | ".join(f"{v} / {first} (medians)" for v in later) + " |")
    print("|---|---|" + "---|" * (2 * len(versions) - 1))
    for r in results:
        if r.error:
            print(f"| {r.case.spec} {r.case.shape} | {r.case.config} | {r.error} |" + " |" * (2 * len(versions) - 2))
            continue
        times = [" / ".join(f"{x:.3f}" for x in r.ms[v]) for v in versions]
        ratios = [f"{statistics.median(r.ms[v]) / statistics.median(r.ms[first]):.3f}" for v in later]
        print(f"| {r.case.spec} {r.case.shape} | {r.case.config} | " + " | ".join(times + ratios) + " |")
    if any(r.host_us for r in results):
        print("\nHost microseconds a call (the wrapper and the launch; the GPU not waited for):\n")
        print("| case | config | " + " | ".join(f"{v} host us" for v in versions) + " |")
        print("|---|---|" + "---|" * len(versions))
        for r in results:
            if r.host_us:
                print(f"| {r.case.spec} {r.case.shape} | {r.case.config} | "
                      + " | ".join(" / ".join(f"{x:.0f}" for x in r.host_us[v]) for v in versions) + " |")


def parse_base(text: str) -> tuple[str, Path]:
    """NAME=DIR, or DIR alone (named "before")."""
    name, _, path = text.rpartition("=")
    return name or "before", Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", action="append", required=True, type=parse_base,
                        help="another copy of the repository: its templates are 'before'; NAME=DIR, repeated, "
                             "for several")
    parser.add_argument("--case", action="append", required=True, type=Case.parse,
                        help='"SPEC BxHxNxD CONFIG LABEL", e.g. "noop 2x16x8192x128 BM128 BN64 w4 s3 gluon"')
    parser.add_argument("--spec-dir", default=str(ROOT / "examples" / "specs"))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed per call of each version")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--out", default="ab.json")
    parser.add_argument("--host", action="store_true", help="also time the host's side of each call")
    parser.add_argument("--layout", default="contiguous", choices=list(LAYOUTS),
                        help="how q, k and v lie in memory (the verifier's trial layouts)")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.base]
    if len(set(names + ["after"])) != len(names) + 1:
        parser.error(f"each --base needs its own NAME (and none may be 'after'): got {names}")
    if not torch.cuda.is_available():
        print("ab.py times kernels on a CUDA GPU; none is visible here.", file=sys.stderr)
        return 2
    renderers = {name: base_renderer(path, name) for name, path in args.base} | {"after": render_kernel}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.case:
            try:
                results.append(run_case(case, renderers, Path(args.spec_dir), DTYPES[args.dtype], args.reps,
                                        args.seconds, Path(tmp), args.host, args.layout))
            except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
                results.append(Result(case, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"))
            print(json.dumps(asdict(results[-1])), flush=True)
            Path(args.out).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "layout": args.layout,
                                                  "results": [asdict(r) for r in results]}, indent=1))
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.dtype}, q, k, v {LAYOUTS[args.layout]};"
          f" {args.reps} repetitions of {args.seconds} s a call each, alternating\n")
    print_table(results, list(renderers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
