"""Row-constant score_mod terms centred on the tile's first query row (agent/builtin/row_shift.py): what is
centred, what stays as traced, and that the centred sum differs from the spec's by a row constant only, with
no rounding error from large indices (Triton's interpreter on the CPU)."""
from __future__ import annotations

import re

import pytest

from agent.builtin.lower import HELPERS, lower_spec
from test_builtin import builtin_kernel, run_interpreted, write_spec
from verifier.spec import SpecFiles, load_spec

CENTRED = {
    "alibi": """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + (kv_idx - q_idx) * torch.exp2(-((h + 1) * 8.0 / 16))
    """,
    "rel_pos": """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + (q_idx - kv_idx)
    """,
    "cast_and_scaled": """
        def score_mod(score, b, h, q_idx, kv_idx):
            return (score - (q_idx - kv_idx).float() * 0.25 + h) * 0.5
    """,
}
AS_TRACED = {
    "q_through_floor_division": """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + (q_idx // 64 - kv_idx)
    """,
    "integer_product": """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + (q_idx * kv_idx) * 0.001
    """,
    "bias_of_distance": """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + torch.where(q_idx >= kv_idx, 0.0, -1.0)
    """,
}


def returned(source: str) -> str:
    return re.search(r"\n    return (.*)\n", source).group(1)


@pytest.mark.parametrize("name", CENTRED)
def test_query_terms_are_taken_once_per_tile(tmp_path, name):
    source = lower_spec(load_spec(SpecFiles(write_spec(tmp_path, name, CENTRED[name])))).score.source
    assert "q_start" in returned(source) and "q_idx" not in returned(source)
    assert "(kv_idx) - (q_idx)" not in source and "(q_idx) - (kv_idx)" not in source  # no dead per-score work


@pytest.mark.parametrize("name", AS_TRACED)
def test_terms_that_vary_along_a_row_stay_as_traced(tmp_path, name, verifier):
    path = write_spec(tmp_path, name, AS_TRACED[name])
    source = lower_spec(load_spec(SpecFiles(path))).score.source
    assert "q_start" not in source.split("):\n", 1)[1]
    verdict = verifier(path).verify(builtin_kernel(path))
    assert verdict.accepted, verdict.message


@pytest.mark.parametrize("name", CENTRED)
def test_centred_terms_change_each_row_by_a_constant_with_no_rounding_from_large_indices(tmp_path, name):
    """Rows 2^20.. against keys near them: an uncentred kv_idx * slope rounds to ~0.06 there; centred on the
    tile's first row the terms stay as small as the spec's own."""
    spec = load_spec(SpecFiles(write_spec(tmp_path, name, CENTRED[name])))
    lowered = lower_spec(spec)
    source = ("import triton\nimport triton.language as tl\nAPPROX_MATH = tl.constexpr(False)\n" + HELPERS
              + "\n" + lowered.score.source + '''

@triton.jit
def apply(S, O, h, q0, kv0, BM: tl.constexpr, BN: tl.constexpr):
    q_idx = (q0 + tl.arange(0, BM))[:, None]
    kv_idx = (kv0 + tl.arange(0, BN))[None, :]
    offsets = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    out = _score_mod(tl.load(S + offsets), 0, h, q_idx, kv_idx, q_idx >= 0, kv_idx >= 0, q0)
    tl.store(O + offsets, out)
''')
    found = run_interpreted(source, _script(str(spec.files.paths[0])), tmp_path)
    assert found["spread"] < 1e-5  # float32 rounding of values near 1, not of values near 2^20
    assert found["first_row"] < 1e-5  # at q_idx == q_start the centred sum is the spec's own


def _script(spec_path: str) -> str:
    return f"""
        import importlib.util
        spec_module = importlib.util.spec_from_file_location("spec_under_test", {spec_path!r})
        spec = importlib.util.module_from_spec(spec_module)
        spec_module.loader.exec_module(spec)
        q0, kv0, spreads, first_rows = 2 ** 20, 2 ** 20 - 8, [], []
        s = torch.randn(16, 32)
        for h in range(3):
            out = torch.empty_like(s)
            module.apply[(1,)](s, out, h, q0, kv0, BM=16, BN=32)
            q = torch.arange(q0, q0 + 16)[:, None]
            kv = torch.arange(kv0, kv0 + 32)[None, :]
            shift = out.double() - spec.score_mod(s.double(), 0, torch.tensor(h), q, kv).double()  # exact index arithmetic
            spreads.append((shift.max(1).values - shift.min(1).values).max().item())
            first_rows.append(shift[0].abs().max().item())
        print(json.dumps({{"spread": max(spreads), "first_row": max(first_rows)}}))
    """
