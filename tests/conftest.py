"""Shared fixtures for the verifier's tests: the shared spec files, and one CPU Verifier per problem."""
from __future__ import annotations

from pathlib import Path

import pytest

from verifier.problem import Problem, Shape
from verifier.sandbox import Limits
from verifier.problem import interpreter_incompatibility
from verifier.spec import SpecFiles
from verifier.verify import Verifier, VerifyOptions

# CI checks the repository out beside the shared folder (<root>/../shared/specs); elsewhere (a GPU box that
# got only the repository) the copies in examples/specs stand in.
ROOT = Path(__file__).resolve().parents[1]
SPECS = next((p for p in (ROOT.parent / "shared" / "specs", ROOT / "examples" / "specs") if (p / "noop.py").is_file()),
             ROOT.parent / "shared" / "specs")
# The smallest target whose suite still has ragged lengths, Sq != Skv both ways and two query blocks.
SMALL = Shape(batch=2, heads=2, kv_heads=2, seq_len=64, kv_seq_len=64, head_dim=32)


@pytest.fixture(scope="session")
def specs() -> Path:
    if not (SPECS / "noop.py").is_file():
        pytest.skip(f"the shared spec files are not at {SPECS} (CI keeps them in ../shared/specs beside the repo)")
    return SPECS


def spec_path(spec: str | Path | None) -> str | None:
    """A shared spec by name ('causal'), or any file by path."""
    if spec is None:
        return None
    path = Path(spec) if isinstance(spec, Path) or spec.endswith(".py") else SPECS / f"{spec}.py"
    return str(path.resolve())


@pytest.fixture(scope="session")
def verifier(specs):
    """verifier(score, mask, shape, limits) -> a CPU Verifier, built once per session for each problem.

    `score` and `mask` name a shared spec or give a path; one file alone may define both functions."""
    built: dict[tuple, Verifier] = {}

    def get(score: str | Path | None = "noop", mask: str | Path | None = None, shape: Shape = SMALL,
            limits: Limits | None = None) -> Verifier:
        limits = limits or Limits()
        key = (spec_path(score), spec_path(mask), shape, limits.compile_s, limits.call_s)
        if key not in built:
            problem = Problem(SpecFiles(spec_path(score), spec_path(mask)), shape, "bf16", "cpu")
            # a fixed seed, unlike a user's verifier: the same inputs in every run of the tests (those of a fresh
            # seed are tested in test_cheats.py)
            built[key] = Verifier(problem, VerifyOptions(limits=limits, seed=1000))
        return built[key]

    return get


INTERPRETER_BROKEN = interpreter_incompatibility()


def pytest_runtest_setup(item):
    """On a machine whose Triton and numpy cannot run the interpreter (seen on the GPU box), only the GPU tests
    can mean anything: the CPU ones would all fail for the same, already reported, reason."""
    if INTERPRETER_BROKEN and not any(item.iter_markers("gpu")) and not any(item.iter_markers("interpreter_free")):
        pytest.skip(INTERPRETER_BROKEN)
