"""Loading spec files: every kind of bad spec gets one clear paragraph; good ones load as FlexAttention would."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from verifier.problem import Shape
from verifier.spec import SpecError, SpecFiles, load_spec, validate_on_shape

SHAPE = Shape(2, 2, 2, 64, 64, 32)


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def load(score: str | None = None, mask: str | None = None):
    spec = load_spec(SpecFiles(score, mask))
    validate_on_shape(spec, SHAPE)
    return spec


def spec_error(score: str | None = None, mask: str | None = None) -> str:
    with pytest.raises(SpecError) as failure:
        load(score, mask)
    message = str(failure.value)
    assert "\n" not in message and "Traceback" not in message, message  # one paragraph
    return message


# ------------------------------------------------------------------------------------------------ errors
def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.py")
    message = spec_error(path)
    assert f"{path} does not exist" in message
    assert "score_mod(score, b, h, q_idx, kv_idx)" in message


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "broken.py", """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score +
        """)
    message = spec_error(path)
    assert f"{path}:2" in message and "syntax error" in message and "return score +" in message


def test_wrong_arity(tmp_path):
    path = write(tmp_path, "arity.py", """
        def score_mod(score, q_idx, kv_idx):
            return score
        """)
    message = spec_error(path)
    assert "takes 3 arguments" in message and "score_mod(score, b, h, q_idx, kv_idx) (5 arguments)" in message


def test_python_control_flow_on_index_tensors_names_line_and_exception(tmp_path):
    path = write(tmp_path, "branchy.py", """
        def mask_mod(b, h, q_idx, kv_idx):
            if q_idx >= kv_idx:
                return True
            return False
        """)
    message = spec_error(path)
    assert "mask_mod failed when evaluated on index tensors" in message
    assert f"{path}:2 `if q_idx >= kv_idx:`" in message and "RuntimeError" in message
    assert "torch.where" in message


def test_buffer_indexed_past_its_end_names_line_and_exception(tmp_path):
    path = write(tmp_path, "short_table.py", """
        import torch

        table = torch.zeros(4)


        def score_mod(score, b, h, q_idx, kv_idx):
            return score + table[q_idx]
        """)
    message = spec_error(path)
    assert f"{path}:7" in message and "IndexError" in message and "past its end" in message


def test_error_while_the_module_runs(tmp_path):
    path = write(tmp_path, "raises.py", """
        WINDOW = int("wide")


        def mask_mod(b, h, q_idx, kv_idx):
            return q_idx - kv_idx < WINDOW
        """)
    message = spec_error(path)
    assert "failed while being loaded" in message and f"{path}:1" in message and "ValueError" in message


def test_captured_list_is_not_a_buffer(tmp_path):
    path = write(tmp_path, "listy.py", """
        lengths = [64, 17]


        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx < lengths[0]
        """)
    message = spec_error(path)
    assert "reads `lengths`, a list" in message and "torch.tensor" in message


def test_misnamed_function(tmp_path):
    path = write(tmp_path, "typo.py", """
        def scoremod(score, b, h, q_idx, kv_idx):
            return score
        """)
    message = spec_error(path)
    assert "scoremod()" in message and "neither score_mod nor mask_mod" in message


def test_file_given_for_a_flag_must_define_that_function(tmp_path):
    score = write(tmp_path, "score.py", """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score
        """)
    not_a_mask = write(tmp_path, "not_a_mask.py", """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score * 2
        """)
    message = spec_error(score, not_a_mask)
    assert f"{not_a_mask} defines no mask_mod" in message and "--mask-mod" in message


def test_two_files_with_different_tensors_of_one_name(tmp_path):
    score = write(tmp_path, "bias_score.py", """
        import torch

        bias = torch.ones(2)


        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[h]
        """)
    mask = write(tmp_path, "bias_mask.py", """
        import torch

        bias = torch.zeros(2)


        def mask_mod(b, h, q_idx, kv_idx):
            return bias[h] == 0
        """)
    message = spec_error(score, mask)
    assert "captured tensor named `bias`" in message


def test_mask_mod_must_return_bool(tmp_path):
    path = write(tmp_path, "intmask.py", """
        def mask_mod(b, h, q_idx, kv_idx):
            return q_idx - kv_idx
        """)
    assert "must return a bool tensor" in spec_error(path)


# ---------------------------------------------------------------------------------------------- good specs
def test_one_file_with_both_functions(tmp_path):
    path = write(tmp_path, "both.py", """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score * 0.5


        def mask_mod(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx
        """)
    spec = load(path)
    assert spec.score_mod is not None and spec.mask_mod is not None
    assert spec.notes[0] == "found score_mod and mask_mod"
    s = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    idx = torch.tensor(3)
    assert float(spec.score_mod(s, idx, idx, idx, idx)) == 0.5
    assert bool(spec.mask_mod(idx, idx, torch.tensor(2), idx)) is False


def test_score_from_one_file_and_mask_from_another(specs):
    spec = load(str(specs / "rel_pos.py"), str(specs / "causal.py"))
    assert spec.name == "rel_pos+causal"
    assert spec.describe()["score_mod"] and spec.describe()["mask_mod"]
    q_idx, kv_idx = torch.tensor([5]), torch.tensor([2])
    assert float(spec.score_mod(torch.zeros(1), 0, 0, q_idx, kv_idx)) == 3.0
    assert bool(spec.mask_mod(0, 0, kv_idx, q_idx)) is False


def test_noop_is_plain_attention(specs):
    for files in (SpecFiles(str(specs / "noop.py")), SpecFiles()):
        spec = load_spec(files)
        validate_on_shape(spec, SHAPE)
        assert spec.score_mod is None and spec.mask_mod is None and not spec.buffers
        assert "plain attention" in spec.notes[0]


def test_buffers_are_discovered(specs):
    spec = load(str(specs / "key_padding.py"))
    assert list(spec.buffers) == ["kv_lengths"]
    assert spec.buffers["kv_lengths"].dtype == torch.int32 and spec.buffers["kv_lengths"].shape == (8,)
    assert spec.describe()["buffers"] == {"kv_lengths": {"shape": [8], "dtype": "int32"}}


def test_buffers_read_through_a_helper_are_discovered(tmp_path):
    path = write(tmp_path, "helper.py", """
        import torch

        starts = torch.tensor([0, 3], dtype=torch.int32)


        def _start(b):
            return starts[b]


        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx >= _start(b)
        """)
    spec = load(path)
    assert list(spec.buffers) == ["starts"]


def test_a_broken_interpreter_pairing_is_a_clear_usage_error(monkeypatch):
    import numpy
    import triton

    from verifier.problem import interpreter_incompatibility

    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.6")
    message = interpreter_incompatibility()
    assert message and "numpy<2.4" in message and "triton>=3.7" in message
    monkeypatch.setattr(triton, "__version__", "3.7.1")
    assert interpreter_incompatibility() is None
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.2.6")
    assert interpreter_incompatibility() is None


def test_a_spec_loaded_again_compiles_with_its_own_buffers(specs):
    """torch.compile refers to a spec's module by name; a second load of the same file (the benchmark loads each
    spec once per shape) must not leave the compiled flex_attention guarding the first load's buffers."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from verifier.reference import buffers_on

    q = k = v = torch.randn(8, 1, 128, 16)
    for copies in (1, 2):  # the second load's buffer differs in shape, which a stale guard would trip on
        spec = load_spec(SpecFiles(None, str(specs / "key_padding.py")))
        with buffers_on(spec, {n: t.repeat(copies) for n, t in spec.buffers.items()}):
            block_mask = create_block_mask(spec.mask_mod, 8, 1, 128, 128, device="cpu")
            torch._dynamo.reset()
            out = torch.compile(flex_attention, dynamic=False)(q, k, v, block_mask=block_mask)
        assert out.shape == q.shape and torch.isfinite(out).all()
