"""The trial past the index limits: its shape, its sampled heads, inputs both processes build alike, a
reference for the sampled heads alone, and the whole path through a real child process (on small shapes: the
interpreter cannot run 4 GB, but the sampling is the same at any size)."""
from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cli import status_line
from kernels import flash_source
from verifier import every_row, numerics, reference
from verifier.child import fingerprint, saved_output
from verifier.gpu_turns import TurnCancelled, Turns
from verifier.past_limits import (GRID_AXIS_LIMIT, INT32_ELEMENTS, input_bytes, past_limits_shape,
                                  past_limits_trial, sample_heads)
from verifier.problem import Problem, Shape
from verifier.sandbox import Limits
from verifier.spec import SpecFiles, covers, load_spec
from verifier.suite import Trial, build_suite, make_inputs, sampled_inputs
from verifier.verify import Cancelled, Verifier, VerifyOptions

from conftest import SMALL, spec_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from reference_under_memory_pressure import chunk_sizes_while  # noqa: E402


def elements(shape: Shape) -> tuple[int, int]:
    return (shape.batch * shape.heads * shape.seq_len * shape.head_dim,
            shape.batch * shape.kv_heads * shape.kv_seq_len * shape.head_dim)


@pytest.mark.parametrize("target", [Shape(2, 16, 16, 8192, 8192, 128), Shape(8, 32, 8, 2048, 2048, 64),
                                    Shape(1, 16, 2, 1, 4096, 128), Shape(4, 12, 4, 100, 300, 8)])
def test_the_shape_passes_both_limits_in_q_k_and_v_keeping_head_dim_and_group(target):
    shape = past_limits_shape(target, lambda s: True)
    assert shape.head_dim == target.head_dim and shape.group == target.group
    assert shape.heads > GRID_AXIS_LIMIT  # heads alone, so a grid of (query blocks, heads, batch) fails too
    assert all(n > INT32_ELEMENTS for n in elements(shape))
    assert input_bytes(shape) < 18 * 2**30  # a few GB a tensor, no more


def write_spec(tmp_path, body: str):
    path = tmp_path / "spec.py"
    path.write_text("import torch\n" + textwrap.dedent(body))
    return load_spec(SpecFiles(str(path)))


def test_the_shape_takes_batches_instead_where_the_buffers_index_heads(tmp_path):
    spec = write_spec(tmp_path, """
        bias = torch.zeros(16)
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[h]
    """)
    target = Shape(2, 16, 4, 512, 512, 64)
    shape = past_limits_shape(target, lambda s: covers(spec, s))
    assert shape.heads == 16 and shape.batch * shape.heads > GRID_AXIS_LIMIT
    assert all(n > INT32_ELEMENTS for n in elements(shape))


def test_no_trial_where_the_buffers_index_both_and_the_reason_is_said(tmp_path):
    spec = write_spec(tmp_path, """
        table = torch.ones(8, 16, dtype=torch.bool)
        def mask_mod(b, h, q_idx, kv_idx):
            return table[b, h] & (kv_idx >= 0)
    """)
    trial, note = past_limits_trial(Shape(2, 16, 16, 256, 256, 64), lambda s: covers(spec, s), free_bytes=2**40)
    assert trial is None and "cover neither that many heads nor that many batches" in note


def test_no_trial_without_the_memory_and_the_reason_is_said():
    trial, note = past_limits_trial(Shape(2, 16, 16, 256, 256, 64), lambda s: True, free_bytes=8 * 2**30)
    assert trial is None and "GiB of GPU memory" in note and "8 GiB are free" in note


def test_covers_reads_the_buffers_at_the_last_batch_and_head(specs):
    spec = load_spec(SpecFiles(spec_path("key_padding")))  # kv_lengths has 8 entries, one per batch
    assert covers(spec, Shape(8, 100000, 1000, 48, 53, 64))
    assert not covers(spec, Shape(9, 16, 16, 48, 53, 64))


def test_the_sample_holds_the_heads_either_side_of_each_limit():
    shape = past_limits_shape(Shape(2, 16, 8, 4096, 4096, 64), lambda s: True)
    pairs = sample_heads(shape, seed=1)
    flat = [b * shape.heads + h for b, h in pairs]
    assert flat == sorted(set(flat)) and len(flat) >= 30
    assert all(0 <= b < shape.batch and 0 <= h < shape.heads for b, h in pairs)
    q_wrap = INT32_ELEMENTS // (shape.seq_len * shape.head_dim)
    for needed in (0, GRID_AXIS_LIMIT - 1, GRID_AXIS_LIMIT, q_wrap - 1, q_wrap, shape.batch * shape.heads - 1):
        assert needed in flat
    assert sample_heads(shape, seed=1) == pairs


def sampled_trial(shape: Shape, sample, seed=7) -> Trial:
    return Trial(id="tx", purpose="sampled", shape=shape, seed=seed, sample=tuple(sample))


def test_sampled_inputs_are_the_whole_inputs_at_the_sampled_heads_and_every_head_differs():
    shape = Shape(batch=2, heads=6, kv_heads=3, seq_len=5, kv_seq_len=9, head_dim=16)
    trial = sampled_trial(shape, [(0, 1), (1, 4), (1, 5)])
    q, k, v = make_inputs(trial, torch.float16, "cpu")
    qs, ks, vs = sampled_inputs(trial, torch.float16, "cpu")
    for i, (b, h) in enumerate(trial.sample):
        assert torch.equal(qs[i, 0], q[b, h])
        assert torch.equal(ks[i, 0], k[b, h // shape.group]) and torch.equal(vs[i, 0], v[b, h // shape.group])
    flat_q = q.reshape(-1, shape.seq_len * shape.head_dim)
    assert len({tuple(row.tolist()) for row in flat_q}) == shape.batch * shape.heads


def test_the_reference_for_sampled_heads_is_the_whole_reference_there(specs):
    spec = load_spec(SpecFiles(spec_path("alibi"), spec_path("key_padding")))  # reads h, and b through a buffer
    shape = Shape(batch=3, heads=4, kv_heads=2, seq_len=7, kv_seq_len=11, head_dim=16)
    trial = sampled_trial(shape, [(0, 3), (2, 0), (2, 3)])
    whole = reference.exact(*make_inputs(trial, torch.float32, "cpu"), spec, None, shape)
    heads = ([0, 2, 2], [3, 0, 3])
    part = reference.exact(*sampled_inputs(trial, torch.float32, "cpu"), spec, None, shape, heads)
    torch.testing.assert_close(part[:, 0], whole[[0, 2, 2], [3, 0, 3]], rtol=1e-12, atol=1e-12)


def test_a_sampled_check_names_the_wrong_head_as_the_problem_numbers_it(specs):
    spec = load_spec(SpecFiles(spec_path("noop")))
    shape = Shape(batch=2, heads=4, kv_heads=4, seq_len=6, kv_seq_len=6, head_dim=16)
    trial = sampled_trial(shape, [(0, 2), (1, 1), (1, 3)])
    out = reference.exact(*make_inputs(trial, torch.float16, "cpu"), spec, None, shape).to(torch.float16)
    assert numerics.check_trial(trial, saved_output(out, trial), spec, torch.float16, "cpu").ok
    out[1, 1] = out[0, 1]  # head (1, 1) given another head's rows
    check = numerics.check_trial(trial, saved_output(out, trial), spec, torch.float16, "cpu")
    assert not check.ok and (check.worst["batch"], check.worst["head"]) == (1, 1)
    assert "every row through a random projection off too" in check.note


@pytest.mark.parametrize("wrong", ["head", "row", "element"])
def test_a_wrong_head_row_or_element_outside_the_sample_fails_at_every_row_and_is_named(specs, wrong):
    spec = load_spec(SpecFiles(spec_path("alibi")))
    shape = Shape(batch=2, heads=6, kv_heads=3, seq_len=9, kv_seq_len=13, head_dim=32)
    trial = sampled_trial(shape, [(0, 0), (1, 5)])
    out = reference.exact(*make_inputs(trial, torch.float16, "cpu"), spec, None, shape).to(torch.float16)
    right = numerics.check_trial(trial, saved_output(out, trial), spec, torch.float16, "cpu")
    assert right.ok and "every row through a random projection within tolerance" in right.note
    if wrong == "head":
        out[1, 2] = out[1, 3]
    elif wrong == "row":
        out[1, 2, 4] = out[1, 2, 5]
    else:
        out[1, 2, 4, 17] += 0.25  # the rows' values are about 0.1-1: a quarter is far outside fp16's error
    check = numerics.check_trial(trial, saved_output(out, trial), spec, torch.float16, "cpu")
    assert not check.ok and check.note.startswith("every row projected")
    assert (check.worst["batch"], check.worst["head"]) == (1, 2) and "col" not in check.worst
    if wrong != "head":
        assert check.worst["row"] == 4 and check.mismatch_fraction == pytest.approx(1 / (2 * 6 * 9))


def test_the_projection_reads_any_strides_and_the_reference_rows_span_chunks(specs, monkeypatch):
    monkeypatch.setattr(every_row, "CHUNK_HEADS", 4)  # several chunks, one ragged, at a size the CPU runs
    spec = load_spec(SpecFiles(spec_path("alibi"), spec_path("key_padding")))  # reads h, and b through a buffer
    shape = Shape(batch=3, heads=6, kv_heads=2, seq_len=5, kv_seq_len=7, head_dim=16)
    trial = sampled_trial(shape, [(0, 0)])
    w = every_row.direction(trial, 16, "cpu").double()
    assert set(w.tolist()) == {-1.0, 1.0} and torch.equal(w, every_row.direction(trial, 16, "cpu").double())
    whole = reference.exact(*make_inputs(trial, torch.float32, "cpu"), spec, None, shape)
    exact, _ = every_row.reference_rows(trial, spec, torch.float32, "cpu")
    torch.testing.assert_close(exact[..., 0], whole @ w, rtol=1e-12, atol=1e-12)
    bshd = whole.float().transpose(1, 2).contiguous().transpose(1, 2)  # [B, H, S, D] values, strides of [B, S, H, D]
    torch.testing.assert_close(every_row.project(bshd, trial).double(), whole @ w, rtol=1e-5, atol=1e-5)


def test_the_reference_rows_take_fewer_heads_where_memory_runs_out(specs, monkeypatch):
    """On an H100 that three other test processes filled, a chunk's float64 k and v failed to allocate (before
    the reference's own query-row chunks begin): the chunk is taken again with fewer heads, to the same rows."""
    spec = load_spec(SpecFiles(spec_path("alibi")))
    shape = Shape(batch=2, heads=6, kv_heads=6, seq_len=5, kv_seq_len=7, head_dim=16)
    trial = sampled_trial(shape, [(0, 0)])
    whole = every_row.reference_rows(trial, spec, torch.float32, "cpu")
    exact, heads_tried = reference.exact, []

    def out_of_memory_past_one_head(q, k, v, spec, scale, shape, heads=None):
        heads_tried.append(q.shape[0])
        if q.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (a stand-in)")
        return exact(q, k, v, spec, scale, shape, heads)
    monkeypatch.setattr(reference, "exact", out_of_memory_past_one_head)
    rows = every_row.reference_rows(trial, spec, torch.float32, "cpu")
    assert heads_tried[:3] == [12, 3, 1] and set(heads_tried[3:]) == {1}
    torch.testing.assert_close(rows, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 258.00 MiB"),
                                   RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"),
                                   ValueError("not memory")])
def test_a_reference_out_of_memory_even_a_head_at_a_time_is_said_and_not_raised(specs, tmp_path, monkeypatch, error):
    """On an H100 three other test processes filled, the reference's rows for the past-limits trial ran out of
    memory in the verifier's own process and the error reached the caller. Now the numerics stage says so (the
    kernel's output not judged, verify again on a free GPU); any other error in the verifier's work still raises."""
    spec = load_spec(SpecFiles(spec_path("noop")))
    shape = Shape(batch=2, heads=4, kv_heads=4, seq_len=6, kv_seq_len=6, head_dim=16)
    trial = sampled_trial(shape, [(0, 2), (1, 1)])
    out = reference.exact(*make_inputs(trial, torch.float16, "cpu"), spec, None, shape).to(torch.float16)
    torch.save(saved_output(out, trial), tmp_path / "tx.pt")
    exact, calls = reference.exact, []

    def fails_after_the_sampled_heads(*args, **kwargs):  # the sampled heads' check, then every row's chunks
        calls.append(args[0].shape[0])
        if len(calls) > 1:
            raise error
        return exact(*args, **kwargs)
    monkeypatch.setattr(reference, "exact", fails_after_the_sampled_heads)
    judge = lambda: numerics.judge([trial], {"tx": str(tmp_path / "tx.pt")}, spec, torch.float16, "cpu")  # noqa: E731
    if isinstance(error, ValueError):
        with pytest.raises(ValueError, match="not memory"):
            judge()
        return
    stage = judge()
    assert (stage.ok, stage.reason) == (False, "out_of_memory")
    assert "own reference for trial tx (sampled, " in stage.message and "verify again" in stage.message
    assert str(error).split(".")[0] in stage.message
    assert calls[1:] == [8, 2, 1]  # fewer heads tried, down to one, for torch's error and cuBLAS's alike


def test_the_candidates_process_hands_back_the_gpu_memory_of_a_past_limits_trial_after_it(tmp_path, monkeypatch):
    """On an H100 running three verifications, two candidates' processes held 22 GB each while the third's
    past-limits trial ran out of memory: the child empties torch's cache after a sampled trial, on a GPU only,
    before the next trial runs."""
    from verifier import child
    events = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("emptied"))
    past = sampled_trial(Shape(batch=2, heads=6, kv_heads=6, seq_len=5, kv_seq_len=7, head_dim=16), [(0, 0)])
    plain = build_suite(SMALL, interpreted=True)[0]
    for trial, device in [(plain, "cuda"), (past, "cpu"), (past, "cuda:0")]:
        child.hand_back_cached_memory(trial, device)
    assert events == ["emptied"]  # the sampled trial on the GPU only

    class Channel:
        def phase(self, name, limit="call", scale=1.0):
            pass

        def record(self, data):
            pass
    handed = []
    monkeypatch.setattr(child, "hand_back_cached_memory", lambda trial, device: handed.append((trial.id, device)))
    job = {"device": "cpu", "run_dtype": "fp16", "kernel": str(tmp_path / "kernel.py"), "out_dir": str(tmp_path),
           "trials": [plain.to_dict(), past.to_dict()]}
    child.run_check(job, Channel(), lambda q, k, v, scale=None: torch.zeros_like(q), {})
    assert handed == [(plain.id, "cpu"), (past.id, "cpu")]  # after every trial, the helper deciding


def test_the_memory_pressure_tool_counts_the_chunks_that_ran_and_puts_the_helper_back(specs, monkeypatch):
    """tools/reference_under_memory_pressure.py (run on a GPU) says which chunk sizes ran: here, through the same
    stand-in for CUDA's allocator as above, 12 heads fail, then 3 run at a time."""
    spec = load_spec(SpecFiles(spec_path("noop")))
    trial = sampled_trial(Shape(batch=2, heads=6, kv_heads=6, seq_len=5, kv_seq_len=7, head_dim=16), [(0, 0)])
    exact = reference.exact

    def out_of_memory_past_three_heads(q, k, v, spec, scale, shape, heads=None):
        if q.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (a stand-in)")
        return exact(q, k, v, spec, scale, shape, heads)
    monkeypatch.setattr(reference, "exact", out_of_memory_past_three_heads)
    helper = reference.in_shrinking_chunks
    (rows, _), sizes = chunk_sizes_while(lambda: every_row.reference_rows(trial, spec, torch.float32, "cpu"))
    assert sizes.count(3) == 4 and 12 not in sizes  # four chunks of three heads (rows: whole, 5 at a time)
    assert rows.shape == (2, 6, 5, 1) and reference.in_shrinking_chunks is helper


def test_a_fingerprint_changes_with_one_element():
    t = torch.randn(2, 3, 5, 16).to(torch.float16)
    before = fingerprint(t)
    t[1, 2, 4, 7] += 1
    assert fingerprint(t) != before


def test_a_fingerprint_is_summed_a_chunk_of_heads_at_a_time_to_the_same_value(monkeypatch):
    """On the GPU the trial's q is 4 GB: torch's int64 sum widened it whole first (16 GB; out of memory on an H100
    beside another verification). Summed by chunks of heads, the fingerprint is the same, and it still sees a change
    in the last chunk."""
    t = torch.randn(2, 7, 5, 16).to(torch.float16)
    words = t.view(torch.int16)
    whole = (int(words.sum(dtype=torch.int64)), int(words[..., ::7].sum(dtype=torch.int64)))
    monkeypatch.setattr(every_row, "CHUNK_HEADS", 3)  # chunks of 3, 3 and 1 heads per batch element
    assert fingerprint(t) == whole
    t[1, 6, 4, 15] += 1
    assert fingerprint(t) != whole


def test_the_suite_puts_the_trial_before_the_repeat_of_the_first():
    past = sampled_trial(Shape(1, 70000, 70000, 48, 53, 16), [(0, 0)])
    suite = build_suite(SMALL, interpreted=False, past_limits=past)
    assert suite[-2].sample == past.sample and suite[-2].id == f"t{len(suite) - 2:02d}"
    assert suite[-1].repeat_of == suite[0].id
    assert not any(t.sample for t in build_suite(SMALL, interpreted=False))


def verifier_sampling(sample) -> Verifier:
    """A CPU verifier whose suite ends with a sampled trial of eight heads, `sample` compared element by element:
    the sampled path end to end through the child process, at a size the interpreter runs."""
    problem = Problem(SpecFiles(spec_path("noop")), SMALL, "bf16", "cpu")
    v = Verifier(problem, VerifyOptions())
    sampled_shape = Shape(batch=2, heads=8, kv_heads=4, seq_len=17, kv_seq_len=33, head_dim=32)
    past = replace(sampled_trial(sampled_shape, sample), id=f"t{len(v.suite) - 1:02d}")
    v.suite = v.suite[:-1] + [past, replace(v.suite[-1], id=f"t{len(v.suite):02d}")]
    return v


@pytest.fixture(scope="module")
def sampling_verifier(specs):
    return verifier_sampling([(0, 1), (1, 6)])


def test_a_kernel_right_at_every_head_passes_the_sampled_trial(sampling_verifier):
    verdict = sampling_verifier.verify(flash_source())
    assert verdict.accepted, f"{verdict.reason}: {verdict.message}"
    numbers = next(s for s in verdict.stages if s.stage == "numerics")
    assert any(t["shape"] == "B2 H8/4 N17x33 D32" and t["ok"] for t in numbers.details["trials"])


def test_the_sampled_trial_waits_for_the_gpus_turn_another_process_holds_and_the_verdict_says_so(tmp_path,
                                                                                                    monkeypatch):
    """Verifications in other processes on the GPU hold its turn while they run their own past-limits trial (22-32
    GB a process on an H100): this one's child and its reference wait for it. The wait is its own phase, so the
    child is not taken for hung at the 3 s deadline of the trial before; and the trial cannot have run before the
    holder let go, which is why the verification took longer than the hold. The turn log (KGEN_TURN_LOG) has every
    process's turns, the candidate's too, whose environment is scrubbed."""
    from test_gpu_turns import holder, wait_until_held

    from verifier.gpu_turns import LOG_VARIABLE
    monkeypatch.setenv(LOG_VARIABLE, str(tmp_path / "turns.log"))
    v = verifier_sampling([(0, 1), (1, 6)])
    v.options = replace(v.options, limits=Limits(compile_s=60.0, call_s=3.0))
    v.turns = Turns(str(tmp_path / "gpu.lock"))  # (a CPU verifier has none: the GPU's file is named by its UUID)
    hold_s = 10.0
    process = holder(tmp_path / "gpu.lock", hold_s)
    wait_until_held(process)
    started = time.monotonic()
    verdicts, lines = [], set()
    judging = threading.Thread(target=lambda: verdicts.append(v.verify(flash_source())))
    judging.start()
    while judging.is_alive():  # what `kgen attention`'s live status line says meanwhile
        lines.add(status_line(SimpleNamespace(search=SimpleNamespace(elapsed=lambda: 1.0,
                                                                     config=SimpleNamespace(budget_s=60.0)),
                                              record=SimpleNamespace(best=None, attempts=1, verified=0),
                                              verifier=v)))
        time.sleep(0.05)
    verdict, = verdicts
    assert process.wait(timeout=60) == 0
    assert verdict.accepted, f"{verdict.reason}: {verdict.message}"
    assert time.monotonic() - started >= hold_s - 0.5
    sampled = v.suite[-2].id
    waits = {w.what: w for w in v.turns.waits}
    assert waits[f"the trial past the index limits ({sampled})"].had  # in the candidate's process
    assert waits[f"the reference of {sampled}"].had  # in the verifier's
    assert any(n.startswith("waited for the GPU's turn") and f"the trial past the index limits ({sampled})" in n
               for n in verdict.notes)
    waiting = f"waiting for the GPU's turn: the trial past the index limits ({sampled})"
    assert any(line.endswith(f"[yellow]{waiting}[/]") for line in lines)
    assert any("waiting" not in line for line in lines) and v.waiting_for_turn() is None
    logged = {f[5]: f for f in (line.split(" ", 5) for line in (tmp_path / "turns.log").read_text().splitlines())}
    holding, trial, ref = logged["holding"], logged[f"the trial past the index limits ({sampled})"], \
        logged[f"the reference of {sampled}"]
    assert int(holding[1]) == process.pid and float(holding[3]) >= hold_s - 0.5
    assert int(ref[1]) == os.getpid() and int(trial[1]) not in (os.getpid(), process.pid)  # the candidate's
    assert float(trial[2]) > 1.0 and trial[4] == ref[4] == "True"  # it waited for the holder, then had the turn
    assert float(trial[0]) - float(trial[3]) >= float(holding[0]) - 0.1  # held only once the holder let go


def test_a_verification_waiting_for_the_gpus_turn_stops_when_the_run_gives_it_up(tmp_path):
    """The run's budget ends (or Ctrl-C) while the candidate's process waits for the turn another holds: the
    verification ends at once, as Cancelled, as it does mid-call."""
    from test_gpu_turns import held_elsewhere

    v = verifier_sampling([(0, 1), (1, 6)])
    v.turns = Turns(str(tmp_path / "gpu.lock"))
    v.options = replace(v.options, cancel=threading.Event())
    with held_elsewhere(tmp_path / "gpu.lock"):
        raised = []

        def judge():
            try:
                v.verify(flash_source())
            except Cancelled as e:
                raised.append(e)
        judging = threading.Thread(target=judge)
        judging.start()
        while judging.is_alive() and v.waiting_for_turn() is None:
            time.sleep(0.05)
        v.options.cancel.set()
        judging.join(timeout=30)
        assert not judging.is_alive() and len(raised) == 1


def test_the_reference_of_a_sampled_trial_waits_for_the_turn_and_gives_it_up_when_cancelled(specs, tmp_path):
    """In the verifier's process: the reference of the trial past the index limits takes the GPU's turn."""
    from test_gpu_turns import held_elsewhere

    spec = load_spec(SpecFiles(spec_path("noop")))
    shape = Shape(batch=2, heads=4, kv_heads=4, seq_len=6, kv_seq_len=6, head_dim=16)
    trial = sampled_trial(shape, [(0, 2), (1, 1)])
    out = reference.exact(*make_inputs(trial, torch.float16, "cpu"), spec, None, shape).to(torch.float16)
    torch.save(saved_output(out, trial), tmp_path / "tx.pt")
    turns = Turns(str(tmp_path / "gpu.lock"))
    assert numerics.judge([trial], {"tx": str(tmp_path / "tx.pt")}, spec, torch.float16, "cpu", turns).ok
    assert [w.what for w in turns.waits] == ["the reference of tx"]
    with held_elsewhere(tmp_path / "gpu.lock"):
        turns.cancel = threading.Event()
        threading.Timer(0.5, turns.cancel.set).start()
        with pytest.raises(TurnCancelled):
            numerics.judge([trial], {"tx": str(tmp_path / "tx.pt")}, spec, torch.float16, "cpu", turns)


def test_a_kernel_that_reads_another_heads_rows_fails_the_sampled_trial_at_that_head(sampling_verifier):
    verdict = sampling_verifier.verify(flash_source(variant="heads_wrap"))  # head h reads head h % 4
    assert not verdict.accepted and verdict.reason == "wrong_output"
    numbers = next(s for s in verdict.stages if s.stage == "numerics")
    failed = [t for t in numbers.details["trials"] if not t["ok"]]
    assert [t["shape"] for t in failed] == ["B2 H8/4 N17x33 D32"]  # every other trial has 2 heads
    assert (failed[0]["worst"]["batch"], failed[0]["worst"]["head"]) == (1, 6)


def test_a_kernel_wrong_only_at_heads_outside_the_sample_fails_at_every_row(specs):
    verdict = verifier_sampling([(0, 1), (1, 2)]).verify(flash_source(variant="heads_wrap"))  # right at h < 4
    assert not verdict.accepted and verdict.reason == "wrong_output"
    numbers = next(s for s in verdict.stages if s.stage == "numerics")
    failed = [t for t in numbers.details["trials"] if not t["ok"]]
    assert [t["shape"] for t in failed] == ["B2 H8/4 N17x33 D32"]
    assert failed[0]["note"].startswith("every row projected") and failed[0]["worst"]["head"] >= 4


def test_the_best_kernels_header_says_the_trial_was_run_and_where():
    from agent.loop import _past_limits_tried

    shape = past_limits_shape(SMALL, lambda s: True)
    past = sampled_trial(shape, sample_heads(shape, seed=3))
    line = _past_limits_tried(build_suite(SMALL, interpreted=False, past_limits=past))
    assert line.startswith(f"and past the index limits, at {shape.label()}") and f"at {len(past.sample)} heads" in line
    assert _past_limits_tried(build_suite(SMALL, interpreted=True)) == ""


def test_unwritten_elements_are_counted_a_chunk_at_a_time_to_the_same_count(monkeypatch):
    """The count of elements still holding the poison, chunk by chunk (what the 4 GB output needs on a GPU), is
    the count over the whole: poisoned elements at either end of a chunk and across chunks all count."""
    from verifier import guards
    out = guards.poison_(torch.empty(2, 3, 5, 16, dtype=torch.float16))
    out.view(-1)[3:400] = 1.0  # written: 397 of 480 elements
    monkeypatch.setattr(guards, "UNWRITTEN_CHUNK", 7)
    assert guards.unwritten_count(out) == 480 - 397
    out.view(-1)[-1] = 0.0
    assert guards.unwritten_count(out) == 480 - 398
