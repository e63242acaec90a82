"""The exact reference against a direct dense float64 computation, chunking, and the mask density."""
from __future__ import annotations

import math

import pytest
import torch

from verifier import reference
from verifier.problem import Shape
from verifier.spec import SpecFiles, load_spec
from verifier.suite import Trial, make_inputs


def dense(q, k, v, spec, scale, shape: Shape) -> torch.Tensor:
    """Attention the obvious way: every score at once, torch.softmax, masked-out rows set to zero."""
    q, k, v = (x.double() for x in (q, k, v))
    k, v = k.repeat_interleave(shape.group, dim=1), v.repeat_interleave(shape.group, dim=1)
    scale = 1.0 / math.sqrt(shape.head_dim) if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    b = torch.arange(shape.batch).view(-1, 1, 1, 1)
    h = torch.arange(shape.heads).view(1, -1, 1, 1)
    qi = torch.arange(shape.seq_len).view(1, 1, -1, 1)
    kv = torch.arange(shape.kv_seq_len).view(1, 1, 1, -1)
    if spec.score_mod is not None:
        s = torch.broadcast_to(spec.score_mod(s, b, h, qi, kv), s.shape).double()
    if spec.mask_mod is not None:
        s = s.masked_fill(~torch.broadcast_to(spec.mask_mod(b, h, qi, kv), s.shape), float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0) @ v  # a row with every key masked is NaN: zero it


def inputs(shape: Shape, dist: str = "normal", seed: int = 7):
    return make_inputs(Trial(id="t", purpose="test", shape=shape, dist=dist, seed=seed), torch.float16, "cpu")


SHAPES = {
    "gqa": Shape(2, 4, 2, 40, 40, 16),
    "fewer queries": Shape(1, 2, 2, 23, 57, 32),
    "more queries": Shape(1, 2, 1, 57, 23, 32),
    "batch 8": Shape(8, 1, 1, 90, 90, 16),
}


@pytest.mark.parametrize("name", ["noop", "causal", "rel_pos", "alibi", "softcap", "key_padding", "sliding_window",
                                  "dilated_causal"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_matches_dense_float64(specs, name, shape):
    spec = load_spec(SpecFiles(str(specs / f"{name}.py")))
    q, k, v = inputs(shape)
    got = reference.exact(q, k, v, spec, None, shape)
    assert got.dtype == torch.float64 and got.shape == shape.q_shape
    torch.testing.assert_close(got, dense(q, k, v, spec, None, shape), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dist", ["large", "adversarial"])
def test_matches_dense_with_explicit_scale_and_hard_inputs(specs, dist):
    shape = Shape(2, 2, 2, 48, 64, 32)
    spec = load_spec(SpecFiles(str(specs / "alibi.py")))
    q, k, v = inputs(shape, dist)
    torch.testing.assert_close(reference.exact(q, k, v, spec, 0.3, shape), dense(q, k, v, spec, 0.3, shape),
                               rtol=1e-10, atol=1e-10)


def test_fully_masked_rows_give_zeros(tmp_path):
    path = tmp_path / "late.py"
    path.write_text("def mask_mod(b, h, q_idx, kv_idx):\n    return q_idx >= kv_idx + 5\n")
    spec = load_spec(SpecFiles(str(path)))
    shape = Shape(1, 2, 2, 20, 20, 16)
    q, k, v = inputs(shape)
    for out in (reference.exact(q, k, v, spec, None, shape), reference.straightforward(q, k, v, spec, None, shape)):
        assert torch.isfinite(out).all()
        assert out[:, :, :5].abs().max() == 0  # rows 0..4 keep no key
        assert out[:, :, 5:].abs().amin(dim=-1).min() > 0
    torch.testing.assert_close(reference.exact(q, k, v, spec, None, shape), dense(q, k, v, spec, None, shape))


def test_key_padding_to_one_key_returns_that_value(specs):
    """Batch element 7 of key_padding keeps only key 0: its output is v[0] exactly."""
    spec = load_spec(SpecFiles(str(specs / "key_padding.py")))
    shape = Shape(8, 2, 2, 16, 16, 16)
    q, k, v = inputs(shape)
    out = reference.exact(q, k, v, spec, None, shape)
    assert torch.equal(out[7], v[7, :, :1].double().expand(2, 16, 16))


@pytest.mark.parametrize("name", ["causal", "rel_pos", "key_padding"])
def test_chunking_gives_the_same_answer(specs, monkeypatch, name):
    spec = load_spec(SpecFiles(str(specs / f"{name}.py")))
    shape = Shape(8, 2, 1, 50, 70, 16)
    q, k, v = inputs(shape)
    whole = reference.exact(q, k, v, spec, None, shape), reference.straightforward(q, k, v, spec, None, shape)
    # room for 3 rows of scores per chunk: 17 chunks, the last one short
    monkeypatch.setitem(reference.CHUNK_BYTES, "cpu", 3 * shape.batch * shape.heads * shape.kv_seq_len * 8)
    assert reference._chunk_rows(shape.batch * shape.heads, shape.kv_seq_len, torch.float64, "cpu") == 3
    chunked = reference.exact(q, k, v, spec, None, shape), reference.straightforward(q, k, v, spec, None, shape)
    torch.testing.assert_close(chunked[0], whole[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked[1], whole[1], rtol=2**-10, atol=1e-4)  # fp32 matmuls: a ulp of fp16 at most
    monkeypatch.setitem(reference.CHUNK_BYTES, "cpu", 1)  # one row per chunk
    assert reference.mask_density(spec, shape) == pytest.approx(dense_density(spec, shape), abs=1e-12)


def torch_out_of_memory(rows: int) -> Exception:
    return torch.OutOfMemoryError(f"CUDA out of memory (a stand-in for {rows} rows)")


def cublas_out_of_memory(rows: int) -> Exception:
    return RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")


def out_of_memory_past(rows: int, calls: list, error=torch_out_of_memory):
    """torch.matmul as on a GPU whose memory other processes hold: a product over more than `rows` query rows
    fails as CUDA's allocator does (or, with `cublas_out_of_memory`, as cuBLAS does when its workspace cannot be
    had)."""
    matmul = torch.matmul

    def limited(a, b):
        calls.append(a.shape[-2])
        if a.shape[-2] > rows:
            raise error(a.shape[-2])
        return matmul(a, b)
    return limited


@pytest.mark.parametrize("error", [torch_out_of_memory, cublas_out_of_memory])
def test_the_reference_takes_smaller_chunks_where_memory_runs_out(specs, monkeypatch, error):
    """With three other test processes verifying on one H100, the reference's chunk failed to allocate and the
    verification ended in a traceback: now it goes on in smaller chunks, to the same answer, whether torch's
    allocator or cuBLAS's workspace ran out."""
    spec = load_spec(SpecFiles(str(specs / "rel_pos.py")))
    shape = Shape(2, 2, 2, 50, 70, 16)
    q, k, v = inputs(shape)
    whole = reference.exact(q, k, v, spec, None, shape)
    calls = []
    monkeypatch.setattr(torch, "matmul", out_of_memory_past(5, calls, error))
    torch.testing.assert_close(reference.exact(q, k, v, spec, None, shape), whole, rtol=1e-12, atol=1e-12)
    assert calls[0] == 50 and max(c for c in calls if c <= 5) == 3  # 50 rows, then 12, then 3 at a time


def test_the_reference_gives_up_when_one_row_does_not_fit(specs, monkeypatch):
    spec = load_spec(SpecFiles(str(specs / "causal.py")))
    shape = Shape(1, 2, 2, 40, 40, 16)
    q, k, v = inputs(shape)
    monkeypatch.setattr(torch, "matmul", out_of_memory_past(0, []))
    with pytest.raises(torch.OutOfMemoryError):
        reference.exact(q, k, v, spec, None, shape)


def test_the_reference_does_not_retry_an_error_that_is_not_memory(specs, monkeypatch):
    spec = load_spec(SpecFiles(str(specs / "causal.py")))
    shape = Shape(1, 2, 2, 40, 40, 16)
    q, k, v = inputs(shape)
    calls = []
    monkeypatch.setattr(torch, "matmul", out_of_memory_past(0, calls, lambda rows: ValueError("not memory")))
    with pytest.raises(ValueError, match="not memory"):
        reference.exact(q, k, v, spec, None, shape)
    assert calls == [40]  # the first chunk only: no smaller one was tried


def dense_density(spec, shape: Shape) -> float:
    if spec.mask_mod is None:
        return 1.0
    b, h, qi, kv = (torch.arange(n).view([-1 if i == j else 1 for j in range(4)]) for i, n in
                    enumerate((shape.batch, shape.heads, shape.seq_len, shape.kv_seq_len)))
    keep = torch.broadcast_to(spec.mask_mod(b, h, qi, kv), (shape.batch, shape.heads, shape.seq_len, shape.kv_seq_len))
    return float(keep.double().mean())


@pytest.mark.parametrize("n", [1, 64, 1000])
def test_causal_mask_density(specs, n):
    spec = load_spec(SpecFiles(str(specs / "causal.py")))
    assert reference.mask_density(spec, Shape(2, 3, 3, n, n, 64)) == pytest.approx((n + 1) / (2 * n), abs=1e-12)


def test_density_without_a_mask_is_one(specs):
    assert reference.mask_density(load_spec(SpecFiles(str(specs / "rel_pos.py"))), Shape(1, 1, 1, 8, 8, 16)) == 1.0


def test_straightforward_error_is_small_but_real(specs):
    """The tolerance rests on this: the dtype's own error, well below the output's scale but not zero."""
    spec = load_spec(SpecFiles(str(specs / "causal.py")))
    shape = Shape(2, 2, 2, 64, 64, 32)
    q, k, v = inputs(shape)
    error = float((reference.straightforward(q, k, v, spec, None, shape).double()
                   - reference.exact(q, k, v, spec, None, shape)).abs().max())
    assert 0 < error < 1e-2
