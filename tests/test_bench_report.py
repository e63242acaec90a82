"""The benchmark's report of saved results (the GPU part of the benchmark runs only on the device)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.interpreter_free
ROOT = Path(__file__).resolve().parents[1]


def bursts(one_by_one_ms: float, queued_ms: float) -> dict:
    """A contender's two bursts as a saved row keeps them (timing.Queued's fields)."""
    return {"one_by_one_ms": one_by_one_ms, "queued_ms": queued_ms}


def row(spec: str, kgen_ms: float, flex_ms: float, sdpa_ms: float | None = None) -> dict:
    return {"spec": spec, "shape": "B2 H16 N8192 D128", "density": 1.0, "kgen_ms": kgen_ms, "kgen_config": "BM64",
            "flex_ms": {"default": flex_ms * 1.1, "max-autotune": flex_ms}, "sdpa_ms": sdpa_ms}


def test_report_merges_files_into_one_table_with_ratios(tmp_path):
    for name, rows in (("a.json", [row("noop", 2.0, 2.4, sdpa_ms=1.6)]), ("b.json", [row("softcap", 4.0, 3.0)])):
        run = {"gpu": "Test GPU", "torch": "2.x", "rows": rows} | ({"wall_seconds": 42} if name == "a.json" else {})
        (tmp_path / name).write_text(json.dumps(run))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--report",
                           str(tmp_path / "a.json"), str(tmp_path / "b.json")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    noop = next(line for line in lines if line.startswith("| noop"))
    # 4*B*H*N*N*D = 1.1 TFLOP in 2.0 ms; flex max-autotune 2.4 ms; SDPA 1.6 ms
    assert noop.split(" | ")[2] == "550" and "1.20x" in noop and noop.endswith("0.80x |")
    assert "0.75x" in next(line for line in lines if line.startswith("| softcap"))
    assert "geometric mean kgen/flex max-autotune: 0.949x over 2 rows; min 0.75x, max 1.20x; 1 rows at 1.00x" \
           in done.stdout
    assert "Test GPU" in lines[0] and "2 run(s) (1 rows in 42 s, 1 rows)" in lines[0]


def test_a_row_timed_again_in_a_later_file_replaces_the_earlier_one(tmp_path):
    first = [row("noop", 2.0, 2.4), row("softcap", 4.0, 3.0)]
    for name, rows in (("a.json", first), ("b.json", [row("noop", 1.0, 2.4)])):
        (tmp_path / name).write_text(json.dumps({"gpu": "Test GPU", "torch": "2.x", "rows": rows}))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--report",
                           str(tmp_path / "a.json"), str(tmp_path / "b.json")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    noop = [line for line in done.stdout.splitlines() if line.startswith("| noop")]
    assert len(noop) == 1 and "2.40x" in noop[0]  # the second timing, 1.0 ms
    assert "over 2 rows" in done.stdout


def test_the_workers_compile_every_config_a_row_may_try():
    """The first configs of the search and every refinement the search could ask for after them."""
    from agent.proposers import first_configs, refinements, shared_memory_check
    from benchmarks.precompile import precompile_configs
    for head_dim in (64, 128):
        planned = precompile_configs(head_dim)
        first = first_configs(head_dim, interpreted=False)  # the benchmark's own GPU decides
        assert planned[:len(first)] == first and len(set(planned)) == len(planned)
        fits = shared_memory_check(head_dim)
        for winner in first:  # whichever first config wins, its refinements were compiled ahead
            assert set(refinements({c: (1.0 if c == winner else 2.0) for c in first}, fits)) <= set(planned)


def test_workers_compile_by_module_name_and_say_what_failed(tmp_path):
    """A real worker process runs a job: on a GPU it compiles; without one it fails, and the summary says so
    instead of hiding it."""
    import torch

    from agent.builtin.template import KernelConfig
    from benchmarks.precompile import Precompiler

    job = (str(ROOT / "examples" / "specs" / "noop.py"), "B1 H2 N128 D64", KernelConfig(32, 32, 4, 2).to_dict())
    precompiler = Precompiler([job], "fp16", workers=1)
    assert os.environ["TRITON_CACHE_DIR"]  # pinned, so that inductor cannot move this process's cache away later
    precompiler.futures[0].result(timeout=300)
    summary = precompiler.stop()
    if torch.cuda.is_available():
        assert summary == "precompile: 1 of 1 configs compiled ahead"
    else:
        assert summary.startswith("precompile: 0 of 1 configs compiled ahead; 1 failed there") and "CUDA" in summary
    assert Precompiler([job], "fp16", workers=0).stop().startswith("precompile: off")


def test_report_gives_flex_flash_its_own_ratio_column(tmp_path):
    """FlashAttention-4 through flex (the FLASH backend) is a column of its own beside max-autotune, with its own
    ratio; the geometric mean stays on max-autotune."""
    noop = row("noop", 2.0, 2.4, sdpa_ms=1.6)
    noop["flex_ms"]["flash"] = 1.6
    (tmp_path / "a.json").write_text(json.dumps({"gpu": "Test GPU", "torch": "2.x", "rows": [noop]}))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--report", str(tmp_path / "a.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    head = next(line for line in lines if line.startswith("| spec"))
    assert head.endswith("| flex flash TF/s | SDPA TF/s | kgen/flex max-autotune | kgen/flex flash | kgen/SDPA |")
    cells = next(line for line in lines if line.startswith("| noop")).split(" | ")
    # 1.1 TFLOP: flash 1.6 ms is 687 TFLOP/s, and kgen at 2.0 ms is 0.80x of it
    assert cells[6:11] == ["687", "687", "1.20x", "0.80x", "0.80x |"]
    assert "geometric mean kgen/flex max-autotune: 1.200x over 1 rows" in done.stdout


def test_ab_cases_read_back_and_a_bad_label_fails_before_any_gpu_time():
    from benchmarks.ab import Case

    assert Case.parse("rel_pos 2x16x8192x128 BM128 BN64 w4 s3 gluon persistent") == \
        Case("rel_pos", "2x16x8192x128", "BM128 BN64 w4 s3 gluon persistent")
    with pytest.raises(ValueError, match="not a config label"):
        Case.parse("noop 2x16x8192x128 BM128 BN64 w4")


def test_ab_renders_before_from_the_other_copys_templates(tmp_path):
    """The A/B tool's 'before' kernels come from another copy of the repository (a git worktree, say): its
    templates, not this checkout's."""
    import shutil

    from agent.builtin.lower import lower_spec
    from agent.builtin.template import KernelConfig, render_kernel
    from benchmarks.ab import base_renderer
    from verifier.spec import SpecFiles, load_spec

    shutil.copytree(ROOT / "agent", tmp_path / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    template = tmp_path / "agent" / "builtin" / "gluon.py.j2"
    template.write_text(template.read_text().replace("CONSUMER_REGISTERS = 240", "CONSUMER_REGISTERS = 232"))
    spec = load_spec(SpecFiles(str(ROOT / "examples" / "specs" / "noop.py")))
    cfg = KernelConfig(128, 64, 4, 3, gluon=True)
    before = base_renderer(tmp_path)(spec.name, lower_spec(spec), cfg)
    after = render_kernel(spec.name, lower_spec(spec), cfg)
    assert "CONSUMER_REGISTERS = 232" in before and "CONSUMER_REGISTERS = 240" in after
    assert before.replace("= 232", "= 240") == after


def test_ab_renders_several_bases_side_by_side(tmp_path):
    """Each --base NAME=DIR renders from its own copy's templates, all loaded in one process."""
    import shutil

    from agent.builtin.lower import lower_spec
    from agent.builtin.template import KernelConfig
    from benchmarks.ab import base_renderer, parse_base
    from verifier.spec import SpecFiles, load_spec

    renderers = {}
    for registers in (224, 232):
        copy = tmp_path / f"r{registers}"
        shutil.copytree(ROOT / "agent", copy / "agent", ignore=shutil.ignore_patterns("__pycache__"))
        template = copy / "agent" / "builtin" / "gluon.py.j2"
        template.write_text(template.read_text().replace("CONSUMER_REGISTERS = 240",
                                                         f"CONSUMER_REGISTERS = {registers}"))
        name, path = parse_base(f"r{registers}={copy}")
        assert (name, path) == (f"r{registers}", copy)
        renderers[name] = base_renderer(path, name)
    spec = load_spec(SpecFiles(str(ROOT / "examples" / "specs" / "noop.py")))
    cfg = KernelConfig(128, 64, 4, 3, gluon=True)
    assert "CONSUMER_REGISTERS = 224" in renderers["r224"](spec.name, lower_spec(spec), cfg)
    assert "CONSUMER_REGISTERS = 232" in renderers["r232"](spec.name, lower_spec(spec), cfg)
    assert parse_base(str(tmp_path)) == ("before", tmp_path)


def test_ab_table_puts_each_version_beside_the_first(capsys):
    from benchmarks.ab import Case, Result, print_table

    timed = Result(Case("noop", "2x16x8192x128", "BM128 BN64 w4 s3 gluon"),
                   ms={"head": [1.0, 1.2, 1.1], "try": [0.9, 1.1, 1.0], "after": [1.1, 3.0, 1.0]})
    failed = Result(Case("causal", "2x16x8192x128", "BM128 BN64 w4 s3 gluon"), error="after: wrong output")
    print_table([timed, failed], ["head", "try", "after"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| case | config | head ms | try ms | after ms | try / head (medians) | "
                        "after / head (medians) |")
    # the medians' ratios: one slow repetition of "after" (3.0 ms) does not make it 1.55x the time
    assert lines[2] == ("| noop 2x16x8192x128 | BM128 BN64 w4 s3 gluon | 1.000 / 1.200 / 1.100 | "
                        "0.900 / 1.100 / 1.000 | 1.100 / 3.000 / 1.000 | 0.909 | 1.000 |")
    assert lines[3].count("|") == lines[0].count("|") and "after: wrong output" in lines[3]


def test_ab_refuses_two_bases_of_one_name(tmp_path, capsys):
    from benchmarks.ab import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--base", f"x={tmp_path}", "--base", f"x={tmp_path}", "--case",
              "noop 2x16x8192x128 BM128 BN64 w4 s3 gluon"])
    assert exit_info.value.code == 2
    assert "each --base needs its own NAME" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["bshd", "strided"])
def test_ab_times_inputs_in_the_verifiers_trial_layouts(layout):
    """--layout hands the kernels each input set laid out as the verifier's trial of that layout lays it out (not
    contiguous, every stride as the trial's), the values the same."""
    import torch

    from benchmarks.ab import in_layout
    from verifier.child import laid_out

    sets = [[torch.randn(2, 4, 24, 16, dtype=torch.float16) for _ in range(3)] for _ in range(2)]
    moved = in_layout(sets, layout)
    for inputs, before in zip(moved, sets):
        for t, original, name in zip(inputs, before, "qkv"):
            assert torch.equal(t, original) and not t.is_contiguous()
            assert t.stride() == laid_out(original, layout, name)[0].stride()
    assert in_layout(sets, "contiguous")[0][0].is_contiguous()


def test_a_second_round_times_kgen_first_and_keeps_each_contenders_faster_figure():
    """After the first round (the baselines, then kgen's search), the contenders are timed again in the order given
    (measure() gives kgen's pick first, then the baselines in reverse); each figure becomes the faster of its two.
    A contender not timed again keeps its one figure, and a second timing that fails keeps the first and is said
    in the row's errors."""
    from benchmarks.bench import Row, _first_round, _second_round

    row, timers, order = Row(spec="key_padding", shape="B8 H16 N2048 D128", density=0.6), {}, []

    def timer(name, *figures):
        left = list(figures)

        def time_it():
            order.append(name)
            if not left:
                raise RuntimeError("the GPU went away")
            return left.pop(0)
        return time_it

    _first_round(row, "flex default", timer("flex default", 0.47), timers)
    _first_round(row, "flex flash", timer("flex flash", 0.372, 0.305), timers)
    _first_round(row, "sdpa", timer("sdpa", 0.40), timers)  # nothing left for a second timing
    row.kgen_ms, row.rounds_ms["kgen"] = 0.313, [0.313]
    _second_round(row, {"kgen": timer("kgen", 0.310), "sdpa": timers["sdpa"], "flex flash": timers["flex flash"]})
    assert order == ["flex default", "flex flash", "sdpa", "kgen", "sdpa", "flex flash"]
    assert row.rounds_ms == {"flex default": [0.47], "flex flash": [0.372, 0.305], "sdpa": [0.40],
                             "kgen": [0.313, 0.310]}
    assert (row.kgen_ms, row.flex_ms, row.sdpa_ms) == (0.310, {"default": 0.47, "flash": 0.305}, 0.40)
    assert row.errors == ["sdpa, second round: RuntimeError: the GPU went away"]


def test_a_row_times_the_baselines_then_kgen_then_all_of_them_again_in_reverse(monkeypatch, tmp_path):
    """measure()'s order, its GPU parts replaced by timers that log their calls: one dynamo reset (so that no mode's
    compiled flex is dropped before the second round), each flex mode and SDPA once, kgen's search, then the second
    round from kgen back to the first flex mode, then each contender's GPU kernel time in that order."""
    import contextlib

    from benchmarks import bench
    from verifier.problem import Shape

    order = []
    figures = {"flex default": [0.50, 0.49], "flex flash": [0.37, 0.30], "sdpa": [0.45, 0.44], "kgen": [0.31]}

    def timer(name):
        return lambda: order.append(name) or figures[name].pop(0)

    def search(row, *_):
        order.append("kgen search")
        row.kgen_ms, row.kgen_config = 0.32, "BM128 BN128 w4 s2 gluon persistent"
        return timer("kgen")

    monkeypatch.setattr(bench.reference, "mask_density", lambda *_: 0.6)
    monkeypatch.setattr(bench.reference, "buffers_on", lambda *_: contextlib.nullcontext())
    monkeypatch.setattr(bench, "target_inputs", lambda *_: ([], {}, None))
    monkeypatch.setattr(bench, "sdpa_kind", lambda *_: "plain")
    monkeypatch.setattr(bench, "_flex_timer", lambda spec, shape, sets, mode: timer(f"flex {mode}"))
    monkeypatch.setattr(bench, "_sdpa_timer", lambda *_: timer("sdpa"))
    monkeypatch.setattr(bench, "_kgen", search)
    monkeypatch.setattr(bench.torch._dynamo, "reset", lambda: order.append("dynamo reset"))
    queued_figures = iter([bursts(0.3, 0.29), None, bursts(0.24, 0.2), bursts(0.45, 0.44)])
    monkeypatch.setattr(bench, "_queued_ms", lambda timer: order.append("GPU time") or next(queued_figures))
    row = bench.measure(ROOT / "examples" / "specs" / "noop.py", Shape(8, 16, 16, 2048, 2048, 128), None,
                        ["default", "flash"], tmp_path)
    assert order == ["dynamo reset", "flex default", "flex flash", "sdpa", "kgen search", "kgen", "sdpa", "flex flash",
                     "flex default"] + ["GPU time"] * 4
    assert row.queued_ms == {"kgen": bursts(0.3, 0.29), "sdpa": None,
                             "flex flash": bursts(0.24, 0.2), "flex default": bursts(0.45, 0.44)}
    assert (row.kgen_ms, row.flex_ms, row.sdpa_ms) == (0.31, {"default": 0.49, "flash": 0.30}, 0.44)
    assert row.rounds_ms == {"flex default": [0.50, 0.49], "flex flash": [0.37, 0.30], "sdpa": [0.45, 0.44],
                             "kgen": [0.32, 0.31]} and not row.errors


def test_the_table_lists_contenders_whose_two_rounds_differ_by_more_than_five_percent(tmp_path):
    unsteady = row("key_padding", 0.310, 0.46)
    unsteady["flex_ms"]["flash"] = 0.305
    unsteady["rounds_ms"] = {"kgen": [0.313, 0.310], "flex flash": [0.372, 0.305], "flex default": [0.506]}
    steady = row("noop", 2.0, 2.4) | {"rounds_ms": {"kgen": [2.0, 2.04], "flex max-autotune": [2.4]}}
    (tmp_path / "a.json").write_text(json.dumps({"gpu": "Test GPU", "torch": "2.x", "rows": [unsteady, steady]}))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--report", str(tmp_path / "a.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("timed twice, more than 5% apart (the table has the faster):\n")[1].splitlines()
    assert listed == ["- key_padding B2 H16 N8192 D128, flex flash: 0.3720 then 0.3050 ms"]


def test_the_table_lists_calls_that_took_longer_one_by_one_than_queued(tmp_path):
    """A call more than 10% longer launched one by one than queued (the same burst each way) waited on the host:
    listed with both figures. A contender without bursts, or within 10%, is not; nor is one whose queued burst is
    faster only than the table's long batch (the clock, not the host)."""
    short = row("sliding_window", 0.132, 0.30) | {"density": 0.03}
    short["flex_ms"]["flash"] = 0.2157
    short["rounds_ms"] = {"kgen": [0.1324, 0.1319], "flex flash": [0.2157, 0.2413], "flex default": [0.31]}
    short["queued_ms"] = {"kgen": bursts(0.1301, 0.128), "flex flash": bursts(0.2085, 0.1529),
                          "flex default": None}
    long = row("noop", 1.721, 2.4) | {"queued_ms": {"kgen": bursts(1.5391, 1.5359)}}
    (tmp_path / "a.json").write_text(json.dumps({"gpu": "Test GPU", "torch": "2.x", "rows": [short, long]}))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--report", str(tmp_path / "a.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("the table has the call):\n")[1].splitlines()
    assert listed == ["- sliding_window B2 H16 N8192 D128, flex flash: 0.2085 ms one by one, 0.1529 ms queued "
                      "(36% longer)"]


def test_a_result_file_with_the_first_queued_figures_is_still_read(tmp_path):
    """The fifty-third session's first call saved one queued figure a contender as `gpu_ms`; the report reads the
    file and lists nothing from that field."""
    early = row("noop", 1.721, 2.4) | {"gpu_ms": {"kgen": 1.5359}}
    (tmp_path / "a.json").write_text(json.dumps({"gpu": "Test GPU", "torch": "2.x", "rows": [early]}))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--report", str(tmp_path / "a.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| noop |" in done.stdout and "host-bound" not in done.stdout


def test_the_gpus_time_for_a_call_is_not_made_up_where_there_is_no_gpu():
    """Queued timing needs the GPU's spin kernel; without one (this CPU build) it says so with None, and the table
    then lists nothing for that contender."""
    from verifier import timing

    calls = []
    assert timing._SPIN_CYCLES is None
    assert timing.time_queued(calls.append, sets=3) is None and calls == []


def test_shapes_are_read_with_and_without_gqa():
    """--shapes and ab.py's cases take GQA shapes in the form a row's label writes the heads (H16/4), and a saved
    row's label reads back to its shape."""
    from benchmarks.bench import parse_shape, shape_of_label

    gqa = parse_shape("2x16/4x8192x128")
    assert (gqa.batch, gqa.heads, gqa.kv_heads, gqa.seq_len, gqa.kv_seq_len, gqa.head_dim) == (2, 16, 4, 8192, 8192,
                                                                                             128)
    assert gqa.label() == "B2 H16/4 N8192 D128" and shape_of_label(gqa.label()) == gqa
    plain = parse_shape("8x16x2048x64")
    assert plain.kv_heads == 16 and shape_of_label(plain.label()) == plain
    for bad in ("2x16x8192", "2x16/x8192x128", "2x16x4x8192x128"):
        with pytest.raises(ValueError, match="BxH/HKVxNxD"):
            parse_shape(bad)


def run_sharded(tests: Path, out: Path, *options: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """scripts/sharded_tests.py on a sample test file, as a user runs it: its options, then the file after --."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "sharded_tests.py"), *options, "--out", str(out),
                           "--", str(tests), "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=300,
                          env=env)


def test_sharded_tests_deal_every_test_once_and_report_the_sum(tmp_path):
    """scripts/sharded_tests.py: tests dealt round-robin to processes run at once, the totals summed from their
    JUnit files, and the exit status 1 when any shard has a failure."""
    tests = tmp_path / "test_sample.py"
    tests.write_text("import pytest\n\n"
                     "@pytest.mark.parametrize('i', range(5))\ndef test_passes(i):\n    assert i >= 0\n\n"
                     "def test_fails():\n    assert 1 == 2\n\n"
                     "@pytest.mark.skip(reason='a skip')\ndef test_skipped():\n    pass\n")
    out = tmp_path / "out"
    result = run_sharded(tests, out, "--shards", "3")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 shard(s): 1 failures, 0 errors, 1 skipped, 5 passed of 7" in result.stdout
    from scripts.sharded_tests import totals

    assert [totals(out / f"shard{i}.xml")["tests"] for i in range(3)] == [3, 2, 2]  # 7 dealt round-robin
    assert "test_fails" in "".join((out / f"shard{i}.log").read_text() for i in range(3))


def test_sharded_tests_write_each_failure_the_moment_it_is_known(tmp_path):
    """A shard stopped before pytest's summary (a device call's time limit; here the process exits mid-run) still
    leaves each failure it reached, with its assertion, in shardN.failures."""
    tests = tmp_path / "test_sample.py"
    tests.write_text("import os\n\ndef test_fails():\n    assert 1 + 1 == 3, 'the sum is off'\n\n"
                     "def test_passes():\n    pass\n\ndef test_stops_the_process():\n    os._exit(9)\n")
    out = tmp_path / "out"
    result = run_sharded(tests, out, "--shards", "1")
    assert result.returncode == 1
    assert "shard 0 stopped before its report" in result.stdout
    assert "the sum is off" not in (out / "shard0.log").read_text()  # pytest never reached its summary
    failures = (out / "shard0.failures").read_text()
    assert "==== " in failures and "test_fails (call) FAILED" in failures and "the sum is off" in failures
    assert "test_passes" not in failures


def test_sharded_tests_only_runs_the_shards_named_and_together_they_run_every_test_once(tmp_path):
    tests = tmp_path / "test_sample.py"
    tests.write_text("import pytest\n\n@pytest.mark.parametrize('i', range(6))\ndef test_passes(i):\n    pass\n\n"
                     "def test_fails():\n    assert 1 == 2\n")

    def run(only: str, out: Path):
        return run_sharded(tests, out, "--shards", "3", "--only", only)

    first, second = run("0,1", tmp_path / "a"), run("2", tmp_path / "b")
    assert first.returncode == 1 and "2 shard(s): 1 failures, 0 errors, 0 skipped, 4 passed of 5" in first.stdout
    assert second.returncode == 0 and "1 shard(s): 0 failures, 0 errors, 0 skipped, 2 passed of 2" in second.stdout
    assert sorted(p.name for p in (tmp_path / "a").glob("*.xml")) == ["shard0.xml", "shard1.xml"]
    assert run("3", tmp_path / "c").returncode == 2  # no such shard: a usage error


def test_a_later_call_runs_only_the_tests_an_earlier_one_did_not_pass(tmp_path):
    """A shard cut off mid-run still says, in its outcomes file, which tests passed before it stopped; a second run
    with --skip-passed deals only the rest: those after the cut, the failed one, and none that passed."""
    tests = tmp_path / "test_sample.py"
    tests.write_text("import os, pytest\n\n"
                     "@pytest.mark.parametrize('i', ['a b', 'c'])\ndef test_passes(i):\n    pass\n\n"
                     "def test_fails():\n    assert False\n\n"
                     "def test_cut_off():\n    if not os.environ.get('SECOND'):\n        os._exit(9)\n\n"
                     "def test_after_the_cut():\n    pass\n")

    def run(out: Path, *extra: str, env: dict | None = None):
        return run_sharded(tests, out, "--shards", "1", *extra, env=env)

    first = run(tmp_path / "first")
    assert first.returncode == 1
    assert "shard 0 stopped before its report, 2 passed and 1 failed by then" in first.stdout, first.stdout
    outcomes = (tmp_path / "first" / "shard0.outcomes").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in outcomes] == ["passed", "passed", "failed"]
    assert outcomes[0].endswith("::test_passes[a b]")  # node ids with spaces kept whole
    second = run(tmp_path / "second", "--skip-passed", str(tmp_path / "first"), env={**os.environ, "SECOND": "1"})
    assert second.returncode == 1 and "1 failures, 0 errors, 0 skipped, 2 passed of 3" in second.stdout
    ran = [line.split("::", 1)[1] for line in (tmp_path / "second" / "shard0.outcomes").read_text().splitlines()]
    assert ran == ["test_fails", "test_cut_off", "test_after_the_cut"]
    skipped = (tmp_path / "second" / "skipped-as-passed.txt").read_text().splitlines()
    assert [nodeid.split("::", 1)[1] for nodeid in skipped] == ["test_passes[a b]", "test_passes[c]"]
    third = run(tmp_path / "third", "--skip-passed", str(tmp_path / "first"), "--skip-passed",
                str(tmp_path / "second" / "shard0.outcomes"))
    assert third.returncode == 1 and "1 failures, 0 errors, 0 skipped, 0 passed of 1" in third.stdout  # test_fails
    assert run(tmp_path / "fourth", "--skip-passed", str(tmp_path / "nowhere")).returncode == 2


def test_sharded_tests_say_how_long_the_gpus_turn_was_held(tmp_path):
    """The shards' turns (verifier.gpu_turns, here on a test lock file) go to one log, and the summary says how
    much of the run they held: turns never overlap, so near all of it means more processes would only wait."""
    tests = tmp_path / "test_sample.py"
    tests.write_text("import pytest, time\nfrom verifier.gpu_turns import Turns\n\n"
                     "@pytest.mark.parametrize('i', range(2))\ndef test_takes_a_turn(i):\n"
                     f"    with Turns({str(tmp_path / 'gpu.lock')!r}).take(f'turn {{i}}'):\n"
                     "        time.sleep(1.0)\n")
    out = tmp_path / "out"
    result = run_sharded(tests, out, "--shards", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    held = [line.split(" ", 5) for line in (out / "turns.log").read_text().splitlines()]
    assert sorted(f[5] for f in held) == ["turn 0", "turn 1"] and len({f[1] for f in held}) == 2  # two processes
    assert all(float(f[3]) >= 1.0 and f[4] == "True" for f in held)
    line = next(line for line in result.stdout.splitlines() if line.startswith("the GPU's turn was held"))
    assert line.startswith(f"the GPU's turn was held {sum(float(f[3]) for f in held):.0f} s of the ")
    assert ", 2 turns: see" in line and "went ahead" not in line
    assert float(line.split(" of the ")[1].split(" s run")[0]) >= 2.0  # the two turns one after the other

def test_sustained_runs_read_nvidia_smis_samples_and_leave_out_the_settling_third():
    from benchmarks.sustained import parse_samples, summarize

    text = "1980, 350.12\n[N/A], [N/A]\n\n1500, 699.0\n1510, 698.0\n1520, 695.0\n"
    samples = parse_samples(text)
    assert samples == [(1980.0, 350.12, 0), (1500.0, 699.0, 0), (1510.0, 698.0, 0), (1520.0, 695.0, 0)]
    run = summarize("kgen", 0, [9.0, 8.0, 1.7, 1.8, 1.75, 1.7, 1.75], samples)
    # the first third of each (the boost clock, the first calls) is left out
    assert (run.ms, run.mhz, run.watts, run.reasons) == (1.75, 1510, 697, {})
    assert run.kilocycles == 1.75 * 1510
    with pytest.raises(RuntimeError, match="no nvidia-smi samples"):
        summarize("kgen", 0, [1.0], parse_samples("No devices were found"))


def test_sustained_runs_say_what_held_the_clock_down_in_what_share_of_the_samples():
    from benchmarks.sustained import parse_samples, summarize

    # the driver's bitmask: 0x4 the power cap, 0x20 a thermal limit (software), 0x1 idle
    text = "1980, 90.0, 0x0000000000000001\n1500, 699.0, 0x0000000000000004\n1490, 700.0, 0x0000000000000024\n" \
           "1510, 698.0, 0x0000000000000004\n1600, 650.0, 0x0000000000000000\n"
    samples = parse_samples(text)
    assert [m for _, _, m in samples] == [0x1, 0x4, 0x24, 0x4, 0x0]
    run = summarize("fa4", 1, [1.0, 1.0, 1.0], samples)
    assert run.reasons == {"power cap": 0.75, "thermal (software)": 0.25}  # of the last four samples; idle gone


@pytest.mark.parametrize("spec, args, says", [
    ("noop", [], "name a kernel"),
    ("rel_pos", ["--sdpa"], "SDPA does not compute rel_pos"),  # SDPA takes plain or causal attention only
    ("noop", ["--sdpa", "--shape", "2x16/4x1024x64"], "without GQA"),
    ("causal", ["--sdpa", "--shape", "1x2x256x64"], "CUDA GPU"),
])
def test_sustained_says_what_is_wrong_before_any_gpu_work(spec, args, says):
    if "CUDA" in says and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sustained.py"),
                           str(ROOT / "examples" / "specs" / f"{spec}.py"), *args], capture_output=True, text=True)
    assert done.returncode == 2 and says in done.stderr, done.stderr


def test_ab_bases_copies_the_templates_of_each_revision_afresh(tmp_path):
    """scripts/ab_bases.sh, in a repository of its own: .ab/NAME/agent/builtin at each revision, a stale copy
    replaced, bad names and revisions refused."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "agent" / "builtin").mkdir(parents=True)
    (repo / "scripts" / "ab_bases.sh").write_bytes((ROOT / "scripts" / "ab_bases.sh").read_bytes())
    git = lambda *args: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,  # noqa: E731
                                       check=True, capture_output=True, text=True)
    git("init", "-q")
    template = repo / "agent" / "builtin" / "gluon.py.j2"
    template.write_text("HEADS_AT_A_TIME = 4\n")
    git("add", "-A")
    git("commit", "-qm", "four")
    git("branch", "four")
    template.write_text("HEADS_AT_A_TIME = 2\n")
    git("commit", "-qam", "two")
    (repo / ".ab" / "head" / "agent" / "builtin").mkdir(parents=True)
    (repo / ".ab" / "head" / "agent" / "builtin" / "stale.py").write_text("")
    script = ["bash", str(repo / "scripts" / "ab_bases.sh")]
    done = subprocess.run(script + ["head=four", "HEAD"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (repo / ".ab" / "head" / "agent" / "builtin" / "gluon.py.j2").read_text() == "HEADS_AT_A_TIME = 4\n"
    assert not (repo / ".ab" / "head" / "agent" / "builtin" / "stale.py").exists()
    assert (repo / ".ab" / "HEAD" / "agent" / "builtin" / "gluon.py.j2").read_text() == "HEADS_AT_A_TIME = 2\n"
    assert "/.ab/" in (repo / ".git" / "info" / "exclude").read_text()  # the copies stay out of git
    for bad, says in (("x/y=HEAD", "not a folder name"), ("nosuch", "no such revision")):
        refused = subprocess.run(script + [bad], capture_output=True, text=True)
        assert refused.returncode == 2 and says in refused.stderr


class _WallClockEvent:
    """torch.cuda.Event's timing on the host's clock, for sustained.py's loop on a machine with no GPU."""

    def __init__(self, enable_timing=True):
        self.at = None

    def record(self):
        import time
        self.at = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.at - self.at) * 1e3


def test_a_sustained_run_reads_a_sampling_nvidia_smi_and_stops_it(tmp_path, monkeypatch):
    """run_for against a stand-in nvidia-smi on PATH that knows only the older name of the reasons' field and
    samples as the real one does (a line every -lms until stopped)."""
    import torch

    from benchmarks import sustained

    smi = tmp_path / "nvidia-smi"
    smi.write_text("""#!/usr/bin/env bash
case "$*" in *clocks_event_reasons*) echo 'Field "clocks_event_reasons.active" is not a valid field' >&2; exit 2;; esac
case "$*" in *-lms*) while true; do echo "1500, 699.00, 0x0000000000000004"; sleep 0.05; done;; esac
echo 0x0000000000000000
""")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "Event", _WallClockEvent)
    field = sustained.reasons_field()
    assert field == "clocks_throttle_reasons.active"
    calls = []
    run = sustained.run_for("stand-in", 0, lambda: calls.append(1), 0.5, field)
    assert len(calls) % sustained.CALLS_BETWEEN_EVENTS == 0 and calls
    assert (run.mhz, run.watts, run.reasons) == (1500, 699, {"power cap": 1.0})
    assert run.ms >= 0


def test_a_contenders_bursts_are_saved_as_the_table_reads_them(monkeypatch):
    """`_queued_ms` saves time_queued's two figures under timing.Queued's field names, so that the report rebuilds
    the same Queued from a result file; it times the timer's own call on the timer's own input sets."""
    import functools

    from benchmarks import bench
    from verifier import timing

    seen = []

    def fake_time_queued(call, sets):
        seen.extend(call(i) for i in range(sets))
        return timing.Queued(one_by_one_ms=0.2085, queued_ms=0.1529)

    monkeypatch.setattr(bench.timing, "time_queued", fake_time_queued)
    timer = functools.partial(bench.time_on_sets, [("a", 1), ("b", 2)], lambda name, n: name * n)
    saved = bench._queued_ms(timer)
    assert saved == bursts(0.2085, 0.1529) and seen == ["a", "bb"]
    assert timing.Queued(**json.loads(json.dumps(saved))) == timing.Queued(0.2085, 0.1529)
