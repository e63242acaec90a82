"""The built-in proposer: specs lowered to Triton, rendered into the template, judged by the real verifier
(Triton's interpreter on the CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from agent.builtin.lower import LoweringError, lower_spec
from agent.builtin.template import KernelConfig, render_kernel
from agent.proposers import ConfigSearch, TemplateProposer, refinements, search_space
from conftest import SMALL
from verifier.problem import Problem, Shape
from verifier.reference import exact
from verifier.spec import SpecFiles, load_spec

SHARED = ["alibi", "causal", "dilated_causal", "key_padding", "noop", "rel_pos", "sliding_window", "softcap"]
CONFIG = KernelConfig(32, 32, 4, 2)


def builtin_kernel(spec_path: str, cfg: KernelConfig = CONFIG) -> str:
    spec = load_spec(SpecFiles(str(spec_path)))
    return render_kernel(spec.name, lower_spec(spec), cfg)


def write_spec(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text("import torch\n" + textwrap.dedent(body))
    return str(path)


@pytest.mark.parametrize("name", SHARED)
def test_every_shared_spec_gets_a_kernel_the_verifier_accepts(specs, verifier, name):
    verdict = verifier(name).verify(builtin_kernel(specs / f"{name}.py"))
    assert verdict.accepted, verdict.message


def test_the_tensor_descriptor_variant_is_accepted_too(specs, verifier):
    source = builtin_kernel(specs / "key_padding.py", KernelConfig(32, 32, 4, 2, tma=True))
    assert "TensorDescriptor" in source
    assert verifier("key_padding").verify(source).accepted


RICH_SPEC = """
    # buffers of several ranks and dtypes, integer ops with Python semantics on negative numbers, nested where
    bias = (torch.arange(2 * 127, dtype=torch.float16).reshape(2, 127) / 50.0).contiguous()  # [head, distance]
    keep_key = torch.arange(64) % 7 != 3                                                     # bool [kv]
    head_shift = torch.tensor([1, -2], dtype=torch.int64)                                     # int64 [head]
    temperature = torch.tensor([1.0, 0.5], dtype=torch.float64)                               # float64 [head]

    def score_mod(score, b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        s = score * temperature[h] + bias[h, d + 63] + ((d + head_shift[h]) // 3 % 4).to(torch.float32) * 0.25
        return torch.where(d > 40, torch.where(d % 2 == 0, s - 1.0, s + 0.5), s)

    def mask_mod(b, h, q_idx, kv_idx):
        return keep_key[kv_idx] & (kv_idx // 8 <= q_idx // 8 + 2)
"""


def test_buffers_of_several_ranks_and_dtypes_integer_ops_and_nested_where(tmp_path, verifier):
    path = write_spec(tmp_path, "rich", RICH_SPEC)
    lowered = lower_spec(load_spec(SpecFiles(path)))
    assert lowered.buffers == {"bias": 2, "head_shift": 1, "keep_key": 1, "temperature": 1}
    assert "_py_floordiv" in lowered.score.source or ">>" in lowered.score.source
    verdict = verifier(path).verify(render_kernel("rich", lowered, CONFIG))
    assert verdict.accepted, verdict.message


def test_python_semantics_of_floor_division_and_modulo(tmp_path, verifier):
    # (q - kv) is negative above the diagonal: Triton's // and % truncate, Python's floor
    path = write_spec(tmp_path, "floors", """
        def score_mod(score, b, h, q_idx, kv_idx):
            d = q_idx - kv_idx
            return score + (d // 3).to(torch.float32) * 0.1 + (d % 5).to(torch.float32) * 0.2 - (d // 4) % 3
    """)
    verdict = verifier(path).verify(builtin_kernel(path))
    assert verdict.accepted, verdict.message


def test_constants_chosen_by_where_become_typed_scalars(tmp_path, verifier):
    # torch.where(cond, 0.0, -1.0) traces its two numbers to scalar tensors: a bare `(-1.0).to(...)` is no Triton
    path = write_spec(tmp_path, "penalty", """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + torch.where(q_idx >= kv_idx, 0.0, -1.0) + torch.where(kv_idx < 5, float("-inf"), 0.0)
    """)
    assert "tl.full([], -1.0, tl.float32)" in lower_spec(load_spec(SpecFiles(path))).score.source
    verdict = verifier(path).verify(builtin_kernel(path))
    assert verdict.accepted, verdict.message


def test_an_unsupported_op_names_the_op_and_the_line(tmp_path):
    path = write_spec(tmp_path, "cumsum", """
        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.cumsum(score, dim=0)
    """)
    with pytest.raises(LoweringError) as e:
        lower_spec(load_spec(SpecFiles(path)))
    line = Path(path).read_text().splitlines().index("    return torch.cumsum(score, dim=0)") + 1
    assert "cumsum" in str(e.value) and f"{path}:{line}" in str(e.value)


def test_control_flow_on_indices_is_refused_with_advice(tmp_path):
    path = write_spec(tmp_path, "branchy", """
        def mask_mod(b, h, q_idx, kv_idx):
            if q_idx > kv_idx:
                return q_idx >= 0
            return q_idx < 0
    """)
    with pytest.raises(LoweringError) as e:
        lower_spec(load_spec(SpecFiles(path)))
    assert "torch.where" in str(e.value)


def test_offline_without_a_lowerable_spec_is_a_usage_error(tmp_path):
    path = write_spec(tmp_path, "cumsum", """
        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.cumsum(score, dim=0)
    """)
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "cli", "attention", "--score-mod", path, "--device", "cpu",
                             "--runs-dir", str(tmp_path / "runs")], cwd=root, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "cumsum" in result.stderr and "--model" in result.stderr and "Traceback" not in result.stderr


def run_interpreted(source: str, script: str, tmp_path: Path) -> dict:
    """Import a kernel file under Triton's interpreter in a fresh process and run `script` against it."""
    (tmp_path / "kernel_under_test.py").write_text(source)
    code = "import json, torch\nimport kernel_under_test as module\n" + textwrap.dedent(script)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_block_skipping_empties_whole_blocks(tmp_path, verifier):
    """A document mask (blocks of 32 tokens) keeps only the diagonal blocks: the map lists no others."""
    path = write_spec(tmp_path, "documents", """
        def mask_mod(b, h, q_idx, kv_idx):
            return q_idx // 32 == kv_idx // 32
    """)
    source = builtin_kernel(path)
    assert verifier(path).verify(source).accepted
    found = run_interpreted(source, """
        q = torch.randn(1, 1, 128, 16, dtype=torch.float16)
        summary, lists, nkb, full_runs, part_runs, light, _ = module._get_block_map(q, q, {})
        print(json.dumps({"nkb": nkb, "summary": summary[0, 0, :, :5].tolist(), "full_lists": lists[1, 0, 0, :, 0].tolist(),
                          "runs": [full_runs, part_runs]}))
    """, tmp_path)
    # per query block: one whole block, a run starting at its own block; nothing cut
    assert found["nkb"] == 4 and found["summary"] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 2, 0, 0, 0],
                                                      [1, 3, 0, 0, 0]]
    assert found["full_lists"] == [0, 1, 2, 3]  # each query block loads only its own key block
    assert found["runs"] == [True, True]  # so the kernel computes block addresses instead of reading the lists


def test_block_maps_are_kept_for_the_last_16_shapes(specs, tmp_path):
    """One map per shape, built once; past 16 shapes the oldest goes, and that shape still gets the right output."""
    found = run_interpreted(builtin_kernel(specs / "causal.py"), """
        def run(n):
            g = torch.Generator().manual_seed(n)
            q, k, v = (torch.randn(1, 1, n, 16, generator=g, dtype=torch.float16) for _ in range(3))
            o = module.attention(q, k, v)
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            reference = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                         attn_mask=causal)
            return (o.float() - reference).abs().max().item()

        errors = [run(n) for n in range(8, 25)]  # 17 shapes
        sizes = {key[3] for key in module._BLOCK_MAPS}
        again = module._get_block_map(torch.empty(1, 1, 24, 16), torch.empty(1, 1, 24, 16), {})
        same = again is module._get_block_map(torch.empty(1, 1, 24, 16), torch.empty(1, 1, 24, 16), {})
        errors.append(run(8))  # its map was dropped: built again
        print(json.dumps({"entries": len(module._BLOCK_MAPS), "sizes": sorted(sizes), "worst": max(errors),
                          "same": same}))
    """, tmp_path)
    assert found["entries"] == 16 and found["sizes"] == list(range(9, 25))  # shape 8 went first
    assert found["same"] and found["worst"] < 1e-2


def test_block_skipping_with_kept_blocks_that_are_not_one_run(tmp_path, verifier):
    """Every other key block whole, one key of each other block: no runs, so the kernel reads the block lists."""
    path = write_spec(tmp_path, "stripes", """
        def mask_mod(b, h, q_idx, kv_idx):
            return ((kv_idx // 32) % 2 == 0) | (kv_idx % 64 == 33)
    """)
    source = builtin_kernel(path)
    assert verifier(path).verify(source).accepted
    found = run_interpreted(source, """
        q = torch.randn(1, 1, 64, 16, dtype=torch.float16)
        k = torch.randn(1, 1, 160, 16, dtype=torch.float16)
        summary, lists, nkb, full_runs, part_runs, light, _ = module._get_block_map(q, k, {})
        print(json.dumps({"nkb": nkb, "summary": summary[0, 0, 0, :5].tolist(), "full": lists[1, 0, 0, 0, :3].tolist(),
                          "runs": [full_runs, part_runs]}))
    """, tmp_path)
    assert found["nkb"] == 5 and found["summary"] == [3, -1, 2, -1, 0] and found["full"] == [0, 2, 4]
    assert found["runs"] == [False, False]


def test_cut_blocks_that_keep_a_conjunct_whole_leave_it_out(specs, tmp_path, verifier):
    """Dilated causal is `(q >= kv) & (q - kv even)`. Below the diagonal `q >= kv` holds on the whole block: the
    block map lists those cut blocks first, as light ones, and the kernel tests only the parity there."""
    source = builtin_kernel(specs / "dilated_causal.py")
    assert "keep = keep & (t4)" in source and "WHOLE" in source
    found = run_interpreted(source, """
        q = torch.randn(1, 1, 256, 16, dtype=torch.float16)
        summary, lists, nkb, full_runs, part_runs, light, _ = module._get_block_map(q, q, {})
        print(json.dumps({"summary": summary[0, 0, :, :5].tolist(), "cut": lists[0, 0, 0, 7].tolist(), "light": light,
                          "runs": [full_runs, part_runs]}))
    """, tmp_path)
    assert found["light"] == 1  # the first conjunct, q_idx >= kv_idx, is left out of light blocks
    # query block m: no whole block; m + 1 cut blocks, the m below the diagonal light; one run from block 0
    assert found["summary"] == [[0, 0, m + 1, 0, m] for m in range(8)]
    assert found["cut"] == list(range(8)) and found["runs"] == [True, True]
    # what the verifier's shapes need (a mask-wide test: listing the diagonal block as light fails it)
    assert verifier("dilated_causal").verify(source).accepted


@pytest.mark.parametrize("body, residues, key_class", [
    ("(q_idx >= kv_idx) & ((q_idx - kv_idx) % 2 == 0)", 2, (1, 0)),
    ("((kv_idx - q_idx) % 3 == 0) & (kv_idx <= q_idx + 64 * h)", 3, (1, 0)),
    ("q_idx >= kv_idx", 1, (1, 0)),
    ("(q_idx - kv_idx) % 2 == 1", 2, (1, 1)),  # the other class mod 2
    ("(q_idx + kv_idx) % 2 == 0", 2, (1, 0)),  # a sum has the parity of the difference
    ("(kv_idx + q_idx) % 2 == 0", 2, (1, 0)),
    ("(q_idx + kv_idx) % 3 == 0", 3, (-1, 0)),  # keys in class -c of query class c
    ("((q_idx + kv_idx) % 4 == 1) & (q_idx >= kv_idx)", 4, (-1, 1)),
    ("(q_idx - kv_idx) % 4 == 1", 4, (1, 3)),  # kv = q - 1
    ("(kv_idx - q_idx) % 4 == 1", 4, (1, 1)),  # kv = q + 1
    ("1 == (kv_idx - q_idx) % 4", 4, (1, 1)),
    ("(q_idx - kv_idx) % 4 == 4", 1, (1, 0)),  # never true: no class to run
    ("(q_idx % 4 == kv_idx % 4) & (q_idx >= kv_idx)", 4, (1, 0)),
    ("kv_idx % 3 == q_idx % 3", 3, (1, 0)),
    ("q_idx % 4 == kv_idx % 2", 1, (1, 0)),  # different moduli
    ("q_idx % 4 == h % 4", 1, (1, 0)),
    ("(q_idx - 2 * kv_idx) % 2 == 0", 1, (1, 0)),  # a scaled index: not the difference
])
def test_the_lowering_finds_a_mask_that_keeps_keys_in_one_residue_class_per_query_class(tmp_path, body, residues,
                                                                                       key_class):
    path = write_spec(tmp_path, "dilated", f"def mask_mod(b, h, q_idx, kv_idx):\n    return {body}\n")
    spec = load_spec(SpecFiles(mask_path=path))
    mask = lower_spec(spec).mask
    assert (mask.residues, mask.key_class) == (residues, key_class)
    # the kernel skips every key outside the class paired with the query's: the mask must be false there on every
    # pair, and true somewhere in it (where the test is the whole mask, everywhere)
    q_idx, kv_idx = torch.arange(-24, 24)[:, None], torch.arange(-24, 24)[None, :]
    keep = torch.broadcast_to(spec.mask_mod(torch.tensor(1), torch.tensor(3), q_idx, kv_idx), (48, 48))
    paired = (kv_idx - key_class[0] * q_idx - key_class[1]) % residues == 0
    assert not keep[~paired].any() and (residues == 1 or keep[paired].any())
    if "&" not in body and residues > 1:
        assert keep[paired].all()


@pytest.mark.parametrize("mask", [None, "(q_idx >= kv_idx) & (q_idx % 2 == kv_idx % 2)",
                                  "((q_idx + kv_idx) % 2 == 0) & (q_idx >= kv_idx)"])
def test_the_gluon_kernel_runs_each_residue_class_of_a_dilated_mask_apart(specs, tmp_path, mask):
    """Dilated causal keeps a key only in its query's class mod 2. The Gluon kernel runs each class as a problem of
    its own, on views (batch and head folded, the class as the head; no copy): there the parity test is true on
    every block, so the block map lists the blocks below the diagonal as whole and only the diagonal as cut, where
    run as given every block is cut. A layout whose batch and head do not fold gets no view (the problem runs as
    given). Run by the interpreter: the views and the block map (Triton), not the Gluon kernel itself. The same for
    two other ways of writing dilated causal."""
    path = specs / "dilated_causal.py" if mask is None else write_spec(
        tmp_path, "dilated", f"def mask_mod(b, h, q_idx, kv_idx):\n    return {mask}\n")
    source = builtin_kernel(path, KernelConfig(128, 128, 4, 2, gluon=True, persistent=True))
    found = run_interpreted(source, """
        q = torch.randn(1, 2, 512, 16, dtype=torch.float16)
        q_view, = module._residue_views((q, ))
        folded = torch.equal(q_view, torch.stack([q[0, h, c::2] for h in range(2) for c in range(2)]).view(2, 2, 256, 16))
        swapped = torch.randn(2, 2, 512, 16).transpose(0, 1)  # the batch's stride is half the head's
        transposed = module._residue_views((swapped, )) is None
        maps = {}
        for P, t, H0 in ((2, q_view, 2), (1, q, 2)):
            key = module._block_map_key(t, t, {}, P, H0, (512, 512))
            summary, lists, nkb, full_runs, part_runs, light, _ = module._get_block_map(t, t, {}, key)
            maps[P] = {"summary": summary.tolist(), "light": light}
        unkeyed = module._get_block_map(q, q, {})[0].tolist() == maps[1]["summary"]  # no key: the problem as given
        print(json.dumps({"folded": folded, "transposed": transposed, "residues": module.RESIDUES, "maps": maps,
                          "unkeyed": unkeyed}))
    """, tmp_path)
    assert found["folded"] and found["transposed"] and found["residues"] == 2 and found["unkeyed"]
    # per class (a map row per view head: the class; the mask reads no batch or head, so one view batch):
    # query block m of 256 rows' class: m whole blocks below the diagonal, the diagonal cut (the Gluon kernel's map
    # lists its blocks in one list, so no run of cut blocks is recorded: -1); no block the halves see apart
    by_class = found["maps"]["2"]["summary"][0]
    assert by_class == [[[0, 0, 1, -1, 0, 0, 0, 0, 0], [1, 0, 1, -1, 0, 0, 0, 0, 0]]] * 2
    assert found["maps"]["2"]["light"] == 0
    # as given (4 query blocks of 128): every block at or below the diagonal cut by the parity test, most light
    assert [row[:4] for row in found["maps"]["1"]["summary"][0][0]] == [[0, 0, m + 1, -1] for m in range(4)]


CLASSES_WITH_A_BIAS = """import torch

SLOPES = torch.exp2(-torch.arange(1, 5, dtype=torch.float32))


def score_mod(score, b, h, q_idx, kv_idx):
    return score + SLOPES[h] * (kv_idx - q_idx)


def mask_mod(b, h, q_idx, kv_idx):
    return ((kv_idx - q_idx) % 3 == 0) & (kv_idx <= q_idx + 8 * h + 20 * b)
"""


@pytest.mark.parametrize("cfg", [CONFIG, replace(CONFIG, tma=True)], ids=["pointers", "descriptors"])
def test_the_triton_kernel_runs_each_residue_class_apart_where_a_view_exists(tmp_path, verifier, cfg):
    """The Triton template runs a dilated mask class by class as the Gluon kernel does, on the same views, so
    GPUs without Gluon get it too. Here a mask mod 3 with a bound per batch element and head, and a score_mod
    reading a buffer by head: the spec's functions must see the spec's indices. With pointer loads and with tensor
    descriptors (which take the views' strides; the interpreter runs both). The verifier accepts the kernel (its
    trials at lengths 3 does not divide run the class problem too); the class problem runs exactly
    where a view exists (batch and head that fold, or with descriptors a contiguous copy of them; with GQA and with
    one K head too, where a Q view batch reads its K head's view; at any length of 3 or more: pointers reach a longer
    class's last row through the view's strides, descriptors take each tensor's classes in two parts where 3 does
    not divide its length), the problem as given elsewhere, and each agrees with the float64 reference."""
    path = tmp_path / "classes.py"
    path.write_text(CLASSES_WITH_A_BIAS)
    source = builtin_kernel(path, cfg)
    assert "_residue_views" in source
    assert verifier(str(path), shape=Shape(2, 4, 4, 96, 192, 16)).verify(source).accepted
    found = class_problems_run(source, SpecFiles(str(path)), {
        "classes": (2, 4, 4, 96, 192), "gqa": (2, 4, 2, 96, 192), "mqa": (2, 4, 1, 96, 192),
        "ragged": (2, 4, 4, 95, 190), "ragged gqa": (2, 4, 2, 97, 191), "four queries": (2, 4, 4, 4, 190),
        "one query": (2, 4, 4, 1, 190), "two keys": (2, 4, 1, 95, 2), "transposed": (2, 4, 4, 96, 192)},
        tmp_path, buffers="SLOPES=torch.exp2(-torch.arange(1, 5, dtype=torch.float32))")
    # descriptors take a contiguous copy of any other layout (as the Gluon kernel does), whose batch and head fold;
    # under 3 rows some class has none, and a view of none has no address
    assert found == {"classes": [3], "gqa": [3], "mqa": [3], "ragged": [3], "ragged gqa": [3], "four queries": [3],
                     "one query": [1], "two keys": [1], "transposed": [3] if cfg.tma else [1]}


def class_problems_run(source: str, files: SpecFiles, cases: dict, tmp_path: Path, buffers: str = "") -> dict:
    """Run the kernel under the interpreter on each case (name -> B, H, HK, SQ, SKV at D16; "transposed": q with
    its batch inside its head, which no view folds), check each output against the float64 reference, and return
    the P of each block map the kernel built, per case. `buffers`: the keyword arguments of each call."""
    found = run_interpreted(source, f"""
        runs, saved = {{}}, {{}}
        for name, (B, H, HK, SQ, SKV) in {cases!r}.items():
            module._BLOCK_MAPS.clear()
            torch.manual_seed(0)
            if name == "transposed":
                q = torch.randn(H, B, SQ, 16, dtype=torch.float16).transpose(0, 1)
            else:
                q = torch.randn(B, H, SQ, 16, dtype=torch.float16)
            k, v = (torch.randn(B, HK, SKV, 16, dtype=torch.float16) for _ in range(2))
            saved[name] = (q, k, v, module.attention(q, k, v, {buffers}))
            runs[name] = sorted({{key[5] for key in module._BLOCK_MAPS}})
        torch.save(saved, {str(tmp_path / "cases.pt")!r})
        print(json.dumps(runs))
    """, tmp_path)
    spec = load_spec(files)
    for name, (q, k, v, o) in torch.load(tmp_path / "cases.pt").items():
        B, H, SQ, D = q.shape
        expected = exact(q, k, v, spec, None, Shape(B, H, k.shape[1], SQ, k.shape[2], D))
        assert (o.double() - expected).abs().max().item() < 1e-2, name
    return found


PAIRED_CLASSES = {  # masks whose keys for query class c are in another class: -c + 1 mod 3, c - 1 mod 4
    "sum": "((q_idx + kv_idx) % 3 == 1) & (kv_idx <= q_idx + 8 * h + 20 * b)",
    "offset": "((q_idx - kv_idx) % 4 == 1) & (q_idx >= kv_idx)",
}


@pytest.mark.parametrize("cfg", [CONFIG, replace(CONFIG, tma=True)], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("name", list(PAIRED_CLASSES))
def test_query_classes_paired_with_another_key_class_run_apart(tmp_path, verifier, cfg, name):
    """Where the mask pairs query class c with key class -c + j or c - j (`(q_idx + kv_idx) % P == j`,
    `(q_idx - kv_idx) % P == j`), the kernel runs each query class against its paired key class: the K and V
    views' head is that class, and the spec's functions see the keys' own indices. The verifier accepts the
    kernel; at lengths where the views exist (ragged ones too, with GQA as well) the class problem runs, and each
    output agrees with the float64 reference."""
    path = write_spec(tmp_path, name, f"def mask_mod(b, h, q_idx, kv_idx):\n    return {PAIRED_CLASSES[name]}\n")
    P = lower_spec(load_spec(SpecFiles(mask_path=path))).mask.residues
    source = builtin_kernel(path, cfg)
    assert "hk = _kv_head(h, GROUP, P)" in source
    assert verifier(path, shape=Shape(2, 4, 2, 48, 96, 16)).verify(source).accepted
    found = class_problems_run(source, SpecFiles(mask_path=path), {
        "classes": (2, 4, 4, 48, 96), "gqa": (2, 4, 2, 48, 96), "ragged": (2, 4, 2, 47, 93)}, tmp_path)
    assert found == {"classes": [P], "gqa": [P], "ragged": [P]}


# (indented as the scripts run_interpreted dedents)
MISALIGNED = """
        import math

        def off_a_16_byte_boundary(*shape):
            \"\"\"A contiguous fp16 tensor that starts 2 bytes past an aligned address: a slice of a flat buffer.\"\"\"
            flat = torch.randn(1 + math.prod(shape), dtype=torch.float16)
            return flat[1:].view(shape)
"""


# q, k, v of [2, 2, 40, 16] (k and v alike) as a model may hand them over, for the scripts below
LAYOUTS = MISALIGNED + """
        def laid_out(name):
            if name == "misaligned":
                return [off_a_16_byte_boundary(2, 2, 40, 16) for _ in range(3)]
            if name == "transposed":  # q.transpose(1, 2) of [B, S, H, D]
                return [torch.randn(2, 40, 2, 16, dtype=torch.float16).transpose(1, 2) for _ in range(3)]
            if name == "fused heads":  # heads 1..2 of a fused projection's [B, S, 4, D]
                return [torch.randn(2, 40, 4, 16, dtype=torch.float16)[:, :, 1:3].transpose(1, 2) for _ in range(3)]
            if name == "expanded":  # one batch element's tensor seen as both's (a stride of 0)
                return [torch.randn(1, 2, 40, 16, dtype=torch.float16).expand(2, 2, 40, 16) for _ in range(3)]
            return [torch.randn(2, 2, 40, 16, dtype=torch.float16) for _ in range(3)]
"""
# Stands in for a @triton.jit kernel in the scripts below: each launch's grid and arguments are recorded, not run
RECORDED_LAUNCHES = """
        launches = {}

        class RecordedLaunch:
            def __init__(self, name):
                self.name = name

            def __getitem__(self, grid):
                return lambda *args, **kwargs: launches.__setitem__(self.name, (list(grid), args))
"""
IN_PLACE = {"aligned": True, "transposed": True, "fused heads": True, "misaligned": False, "expanded": False}


def test_the_descriptor_kernel_reads_model_layouts_in_place_and_copies_what_the_copy_engine_refuses(tmp_path, specs):
    """The descriptors take strides: a model's transposed projection and heads of a fused one are read where they
    lie. The copy engine refuses a start off a 16-byte boundary (t.contiguous() hands a contiguous slice back as it
    is) and a stride of 0: those are copied to fresh memory. Causal, run by the interpreter with descriptors, agrees
    with the float64 reference on each."""
    source = builtin_kernel(specs / "causal.py", replace(CONFIG, tma=True))
    found = run_interpreted(source, LAYOUTS + """
        saved, in_place = {{}}, {{}}
        for name in {names!r}:
            q, k, v = laid_out(name)
            in_place[name] = all(module._copy_engine_ready(t) is t for t in (q, k, v))
            saved[name] = (q, k, v, module.attention(q, k, v))
        torch.save(saved, {path!r})
        print(json.dumps(in_place))
    """.format(names=list(IN_PLACE), path=str(tmp_path / "cases.pt")), tmp_path)
    assert found == IN_PLACE
    spec = load_spec(SpecFiles(mask_path=str(specs / "causal.py")))
    for name, (q, k, v, o) in torch.load(tmp_path / "cases.pt").items():
        expected = exact(q, k, v, spec, None, Shape(2, 2, 2, 40, 40, 16))
        assert (o.double() - expected).abs().max().item() < 1e-2, name


@pytest.mark.parametrize("cfg", [CONFIG, replace(CONFIG, tma=True), KernelConfig(128, 128, 4, 2, gluon=True)],
                         ids=["pointers", "descriptors", "gluon"])
def test_the_builtin_kernels_take_problems_with_a_dimension_of_0(tmp_path, specs, cfg):
    """No queries, no batch: an empty output. No keys: every row is empty and outputs zeros. Descriptors refuse a
    dimension of 0, so the wrappers return before any launch (the Gluon kernel's too, which is why it runs on the
    CPU here); causal, whose block map would be built for the problem otherwise."""
    source = builtin_kernel(specs / "causal.py", cfg)
    found = run_interpreted(source, """
        report = {}
        for name, (B, SQ, SKV) in {"no queries": (2, 0, 40), "no keys": (2, 40, 0), "no batch": (0, 40, 40)}.items():
            q = torch.randn(B, 2, SQ, 16, dtype=torch.float16)
            k, v = (torch.randn(B, 2, SKV, 16, dtype=torch.float16) for _ in range(2))
            o = module.attention(q, k, v)
            report[name] = [list(o.shape), o.dtype == q.dtype, bool((o == 0).all())]
        print(json.dumps(report))
    """, tmp_path)
    assert found == {"no queries": [[2, 2, 0, 16], True, True], "no keys": [[2, 2, 40, 16], True, True],
                     "no batch": [[0, 2, 40, 16], True, True]}


@pytest.mark.parametrize("spec", ["noop", "causal"])
def test_the_pointer_kernel_reaches_batch_elements_past_2_to_the_31_elements(tmp_path, specs, spec):
    """q, k and v may hold more than 2**31 elements: the kernel's batch and head offsets are 64-bit (32-bit
    products wrap, and the interpreter, like the GPU, then reads far outside the tensors: it crashed). Here three
    batch elements lie 2**30 + 64 elements apart in one buffer (virtual memory; only the rows written are backed),
    so the third starts past 2**31; the output agrees with the float64 reference."""
    source = builtin_kernel(specs / f"{spec}.py")
    found = run_interpreted(source, """
        B, H, S, D = 3, 1, 16, 16
        far = 2**30 + 64
        memory = torch.empty((B - 1) * far + 3 * H * S * D, dtype=torch.float16)
        q, k, v = (memory.as_strided((B, H, S, D), (far, S * D, D, 1), i * H * S * D) for i in range(3))
        for t in (q, k, v):
            t.copy_(torch.randn(B, H, S, D, dtype=torch.float16))
        o = module.attention(q, k, v)
        torch.save([t.clone() for t in (q, k, v, o)], {path!r})
        print(json.dumps({{"third_batch_start": q[2].storage_offset()}}))
    """.format(path=str(tmp_path / "case.pt")), tmp_path)
    assert found["third_batch_start"] > 2**31
    q, k, v, o = torch.load(tmp_path / "case.pt")
    spec_functions = load_spec(SpecFiles(str(specs / f"{spec}.py")))
    expected = exact(q, k, v, spec_functions, None, Shape(3, 1, 1, 16, 16, 16))
    assert (o.double() - expected).abs().max().item() < 1e-2


@pytest.mark.parametrize("cfg", [CONFIG, replace(CONFIG, tma=True)], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("spec", ["noop", "causal"])
def test_the_triton_kernel_launches_one_grid_axis(tmp_path, specs, spec, cfg):
    """CUDA allows 65535 programs on a grid's second and third axes: a decode batch of 1040 with 64 heads (B * H =
    66560) put there would not launch. The attention kernel and the block map take one axis, whatever B * H; their
    launches are recorded here instead of run (the interpreter knows no such limit)."""
    source = builtin_kernel(specs / f"{spec}.py", cfg)
    found = run_interpreted(source, RECORDED_LAUNCHES + """
        module._attn_fwd = RecordedLaunch("attention")
        if hasattr(module, "_block_map"):
            module._block_map = RecordedLaunch("block map")
        q = torch.randn(1040, 64, 1, 16, dtype=torch.float16)
        k = v = torch.randn(1040, 64, 16, 16, dtype=torch.float16)
        module.attention(q, k, v)
        print(json.dumps({name: grid for name, (grid, _) in launches.items()}))
    """, tmp_path)
    expected = {"attention": [1040 * 64]}
    if spec == "causal":  # it reads neither batch nor head: one block map row per query block, one program here
        expected["block map"] = [1]
    assert found == expected


def test_the_gluon_wrapper_hands_the_copy_engine_what_it_can_read(tmp_path, specs):
    """The Gluon kernel runs on Hopper only; here its wrapper runs on the CPU up to the launch, which records the
    tensor descriptors it is given instead of running. A model's transposed projection and heads of a fused one
    reach the descriptors as they are; a misaligned slice and an expanded batch as aligned contiguous copies with
    the same values."""
    source = builtin_kernel(specs / "noop.py", KernelConfig(128, 128, 4, 2, gluon=True))
    found = run_interpreted(source, LAYOUTS + RECORDED_LAUNCHES + """
        module._attn_fwd = RecordedLaunch("attention")
        report = {{}}
        for name in {names!r}:
            inputs = laid_out(name)
            module.attention(*inputs)
            bases = [d.base for d in launches["attention"][1][:3]]  # the q, k and v descriptors
            report[name] = {{"in_place": [b is t for b, t in zip(bases, inputs)],
                            "aligned_copy": [b.data_ptr() % 16 == 0 and b.is_contiguous() and torch.equal(b, t)
                                             for b, t in zip(bases, inputs)]}}
        print(json.dumps(report))
    """.format(names=list(IN_PLACE)), tmp_path)
    for name, in_place in IN_PLACE.items():
        assert found[name]["in_place"] == [in_place] * 3, name
        assert in_place or found[name]["aligned_copy"] == [True] * 3, name


# the attention kernels' arguments for each tensor's first and second descriptors
GLUON_DESCRIPTORS = {name: (f"{name}_desc", f"{name}_short") for name in "qkv"}
TRITON_DESCRIPTORS = {name: (name.upper(), f"{name.upper()}_SHORT") for name in "qkv"}


@pytest.mark.parametrize("cfg, descriptor_args", [(KernelConfig(128, 128, 4, 2, gluon=True), GLUON_DESCRIPTORS),
                                                  (KernelConfig(128, 64, 8, 3, tma=True), TRITON_DESCRIPTORS)],
                         ids=["gluon", "triton descriptors"])
def test_the_descriptor_wrappers_hand_a_ragged_dilated_problem_over_class_by_class(tmp_path, specs, cfg,
                                                                                   descriptor_args):
    """Dilated causal (P = 2) at lengths 2 does not divide: the Gluon wrapper and the Triton kernel's with tensor
    descriptors, run on the CPU up to the launch, still hand over the residue class problem (P = 2), each tensor's
    classes in two descriptors where its length is odd (`_class_parts`) and in one where it is even. Read back
    through the descriptors' own shapes and strides, the two parts hold every row of the tensor exactly once, each
    where its class and row say (class c, row i: the spec's row 2 i + c)."""
    source = builtin_kernel(specs / "dilated_causal.py", cfg)
    found = run_interpreted(source, RECORDED_LAUNCHES + f"""
        DESCRIPTOR_ARGS = {descriptor_args!r}
""" + """
        names = module._attn_fwd.arg_names
        module._attn_fwd = RecordedLaunch("attention")
        report = {}
        for SQ, SKV in ((7, 9), (6, 9), (9, 10), (10, 10)):
            q = torch.randn(2, 3, SQ, 16, dtype=torch.float16)
            k, v = (torch.randn(2, 3, SKV, 16, dtype=torch.float16) for _ in range(2))
            module.attention(q, k, v)
            args = dict(zip(names, launches["attention"][1]))
            case = {"P": args["P"], "R": [args["RQ"], args["RK"]]}
            for name, t in (("q", q), ("k", k), ("v", v)):
                first, second = (args[a] for a in DESCRIPTOR_ARGS[name])
                R = args["RQ" if name == "q" else "RK"]
                rows = {}  # spec row -> its values, read from the descriptors' views
                for part, shift in ((first, 0), (second, R)):
                    if part is None:
                        continue
                    view = part.base.as_strided(part.shape, part.strides, part.base.storage_offset())
                    for c in range(view.shape[1]):
                        for i in range(view.shape[2]):
                            rows.setdefault((2 * i + c + shift), []).append(view[:, c, i].reshape(6, 16))
                expected = t.reshape(6, t.shape[2], 16)
                case[name] = {"split": second is not None,
                              "every row once": sorted(rows) == list(range(t.shape[2]))
                              and all(len(r) == 1 and torch.equal(r[0], expected[:, n]) for n, r in rows.items())}
            report[f"{SQ}x{SKV}"] = case
        print(json.dumps(report))
    """, tmp_path)
    for case, (q_split, kv_split) in {"7x9": (True, True), "6x9": (False, True), "9x10": (True, False),
                                      "10x10": (False, False)}.items():
        assert found[case]["P"] == 2 and found[case]["R"] == [int(q_split), int(kv_split)], case
        assert found[case]["q"] == {"split": q_split, "every row once": True}, case
        assert found[case]["k"] == found[case]["v"] == {"split": kv_split, "every row once": True}, case


def block_map_of(source: str, tmp_path: Path, n: int, row: int) -> dict:
    return run_interpreted(source, f"""
        q = torch.randn(1, 1, {n}, 16, dtype=torch.float16)
        summary, lists, nkb, full_runs, part_runs, light, _ = module._get_block_map(q, q, {{}})
        print(json.dumps({{"summary": summary[0, 0, {row}, :5].tolist(), "cut": lists[0, 0, 0, {row}].tolist(),
                           "light": light}}))
    """, tmp_path)


def test_the_conjunct_left_out_is_the_one_whole_on_most_cut_blocks(tmp_path, verifier):
    """Even keys, causal: the parity cuts every block, `q >= kv` is whole below the diagonal. The second
    conjunct is the one left out (bitmask 2), from the blocks below the diagonal, listed before it."""
    path = write_spec(tmp_path, "even_keys", """
        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx % 2 == 0) & (q_idx >= kv_idx)
    """)
    source = builtin_kernel(path)
    assert verifier(path).verify(source).accepted
    found = block_map_of(source, tmp_path, 256, row=3)
    assert found["light"] == 2 and found["summary"] == [0, 0, 4, 0, 3] and found["cut"][:4] == [0, 1, 2, 3]


def test_a_light_block_or_two_a_row_is_not_worth_a_second_loop(tmp_path, verifier):
    """A 40-key causal window: each row's cut blocks are the diagonal and one or two at the window's edge, where
    `q >= kv` is whole. Too few to pay for a second cut loop: none is light."""
    path = write_spec(tmp_path, "window40", """
        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx <= 40)
    """)
    source = builtin_kernel(path)
    assert verifier(path).verify(source).accepted
    found = block_map_of(source, tmp_path, 256, row=3)
    assert found["light"] == 0 and found["summary"] == [0, 0, 3, 1, 0] and found["cut"][:3] == [1, 2, 3]


def consumer_blocks(row: list[int], listed: list[int], half: int) -> tuple[list[int], list[int]]:
    """The key blocks one of the Gluon kernel's two consumers runs for a block map row (the arithmetic of its
    `_consumer`), and those of them it runs with no element mask."""
    n_full, _, n_part, _, _, first_only, first_whole, second_whole, second_only = row
    listed = listed[:n_full + n_part]
    front, back = (0, second_only) if half == 0 else (first_only, 0)
    lead, whole = (first_only, n_full + first_whole) if half == 0 else (first_whole, n_full + second_whole)
    mine = listed[front:len(listed) - back]
    return mine, mine[lead:lead + whole]


@pytest.mark.parametrize("name, body, apart", [
    ("sliding_window", None, True),  # each 128-row tile: a block at each end only one half keeps
    ("late", "return q_idx >= kv_idx + 100", True),  # the first tile's first half keeps nothing: not apart there
    ("stripes", "return ((kv_idx // 32) % 2 == 0) | (kv_idx % 64 == 33)", False)])  # no row sees blocks apart
def test_the_gluon_consumers_run_every_block_their_rows_keep_and_skip_only_those_they_do_not(specs, tmp_path, name,
                                                                                             body, apart):
    """The Gluon kernel's block map with 128-row tiles of 64-key blocks sorts each row's blocks for its two
    consumers (64 rows each): checked against the mask itself at 640 x 600, every consumer runs every key block
    that keeps a key for its rows, runs a block with no element mask only where its rows keep every key of it,
    and skips none it needs. The map picks no light blocks where the halves' whole blocks save as much."""
    path = specs / f"{name}.py" if body is None else Path(write_spec(
        tmp_path, name, f"def mask_mod(b, h, q_idx, kv_idx):\n    {body}\n"))
    source = builtin_kernel(str(path), KernelConfig(128, 64, 4, 4, gluon=True, persistent=True))
    found = run_interpreted(source, """
        q, k = torch.empty(1, 1, 640, 16), torch.empty(1, 1, 600, 16)
        summary, lists, nkb, full_runs, part_runs, light, apart = module._get_block_map(q, k, {})
        print(json.dumps({"summary": summary[0, 0].tolist(), "listed": lists[0, 0, 0].tolist(), "light": light,
                          "apart": apart}))
    """, tmp_path)
    namespace = {"torch": torch}
    exec(path.read_text(), namespace)
    keep = namespace["mask_mod"](0, 0, torch.arange(640)[:, None], torch.arange(600)[None, :]).expand(640, 600)
    assert found["apart"] == apart and found["light"] == 0
    skipped = 0
    for m, (row, listed) in enumerate(zip(found["summary"], found["listed"])):
        kept = [kb for kb in range(10) if keep[128 * m:128 * m + 128, 64 * kb:64 * kb + 64].any()]
        assert sorted(listed[:row[0] + row[2]]) == kept  # the loader fetches each block the tile keeps, once
        for half in (0, 1):
            rows = keep[128 * m + 64 * half:128 * m + 64 * half + 64]
            mine, whole = consumer_blocks(row, listed, half)
            assert {kb for kb in kept if rows[:, 64 * kb:64 * kb + 64].any()} <= set(mine)
            assert all(rows[:, 64 * kb:64 * kb + 64].all() and 64 * kb + 64 <= 600 for kb in whole)
            assert mine, "a consumer with no block"
            skipped += len(kept) - len(mine)
    assert (skipped > 0) == apart
    if name == "sliding_window":  # tile 2 (rows 256..383): blocks 0 and 5 for one half each, 1 and 4 whole for one
        assert found["summary"][2] == [2, 2, 4, -1, 0, 1, 1, 1, 1] and found["listed"][2][:6] == [0, 1, 2, 3, 4, 5]
        assert consumer_blocks(found["summary"][2], found["listed"][2], 0) == ([0, 1, 2, 3, 4], [1, 2, 3])
        assert consumer_blocks(found["summary"][2], found["listed"][2], 1) == ([1, 2, 3, 4, 5], [2, 3, 4])
    if name == "late":  # tile 0: only the second half's rows 100.. keep keys (block 0): both consumers run it
        assert found["summary"][0][5:] == [0, 0, 0, 0] and found["summary"][0][:3] == [0, 0, 1]


def test_block_skipping_rows_with_every_key_masked_give_zeros(tmp_path, verifier):
    path = write_spec(tmp_path, "late", """
        def mask_mod(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx + 40
    """)
    source = builtin_kernel(path)
    assert verifier(path).verify(source).accepted
    found = run_interpreted(source, """
        q, k, v = (torch.randn(1, 1, 96, 16, dtype=torch.float16) for _ in range(3))
        out = module.attention(q, k, v)
        summary = module._get_block_map(q, k, {})[0]
        print(json.dumps({"zeros": bool((out[0, 0, :40] == 0).all()), "rest_nonzero": bool((out[0, 0, 40:] != 0).any()),
                          "blocks_for_first_query_block": summary[0, 0, 0, 0].item() + summary[0, 0, 0, 2].item()}))
    """, tmp_path)
    assert found["zeros"] and found["rest_nonzero"]  # no key at all for the first 40 rows
    assert found["blocks_for_first_query_block"] == 0  # query block 0 loads no key block


def test_power_of_two_divisors_lower_to_shifts_and_masks(tmp_path):
    path = write_spec(tmp_path, "dilated", """
        def mask_mod(b, h, q_idx, kv_idx):
            return ((q_idx - kv_idx) % 2 == 0) & ((q_idx // 64) >= (kv_idx // 64))
    """)
    source = lower_spec(load_spec(SpecFiles(path))).mask.source
    assert "& 1" in source and ">> 6" in source and "_py_mod" not in source and "_py_floordiv" not in source


def test_the_search_is_one_config_on_cpu_and_several_on_a_gpu(specs):
    problem = Problem(SpecFiles(str(specs / "causal.py")), SMALL, "fp16", "cpu")
    proposer = TemplateProposer(load_spec(problem.spec), problem)
    assert len(proposer.search.queue) == 1 and not proposer.search.refine
    gpu = search_space(128, interpreted=False, hopper=True)
    assert len(gpu) >= 3 and all(c.tma for c in gpu)  # D=128 on Hopper: descriptors won at every spec
    assert not any(c.tma for c in search_space(128, interpreted=False, hopper=False))
    assert any(not c.tma for c in search_space(64, interpreted=False, hopper=True))  # D=64 causal: plain loads won
    assert all(not c.tma for c in search_space(100, interpreted=False, hopper=True))  # 200-byte rows: no TMA


def test_the_gluon_kernel_is_searched_on_hopper(specs):
    """Warp-specialized Gluon: first at D=128 (it won on dense specs, causal and key padding), 128-key blocks then
    64-key ones, last at D=64 with 128-key blocks (a few percent ahead on some specs, far behind on others), never
    off Hopper or under the interpreter, nor at head dims its tiles do not fit."""
    wide, wide_per_tile, narrow, narrow_per_tile = search_space(128, interpreted=False, hopper=True, gluon=True)[:4]
    assert wide == KernelConfig(128, 128, 4, 2, gluon=True, persistent=True)  # Q in shared memory: two stages fit
    assert narrow == KernelConfig(128, 64, 4, 4, gluon=True, persistent=True)
    for first, second in ((wide, wide_per_tile), (narrow, narrow_per_tile)):  # both forms timed
        assert second == replace(first, persistent=False)
    at_64 = search_space(64, interpreted=False, hopper=True, gluon=True)
    assert [c.gluon for c in at_64] == [False] * (len(at_64) - 1) + [True] and at_64[-1].block_n == 128
    for args in [(128, False, True, False), (128, False, False, True), (128, True, True, True),
                 (96, False, True, True), (32, False, True, True), (64, False, True, False)]:
        assert not any(c.gluon for c in search_space(*args))
    assert KernelConfig.from_label("BM128 BN64 w4 s3 gluon") == KernelConfig(128, 64, 4, 3, gluon=True)
    causal = load_spec(SpecFiles(str(specs / "causal.py")))
    with pytest.raises(ValueError, match="only the Gluon kernel"):
        render_kernel(causal.name, lower_spec(causal), KernelConfig(128, 64, 8, 3, tma=True, persistent=True))


def test_the_persistent_gluon_kernel_differs_only_in_its_launch(specs):
    """One kernel, two launches: a program per query tile, or one per SM looping over tiles (what the search
    times both ways); the kernel code is the same, so every compile-time check covers both."""
    spec = load_spec(SpecFiles(str(specs / "rel_pos.py")))
    configs = [KernelConfig(128, 64, 4, 4, gluon=True, persistent=p) for p in (False, True)]
    per_tile, persistent = (render_kernel(spec.name, lower_spec(spec), cfg).split("\nPERSISTENT = ") for cfg in configs)
    assert per_tile[1].startswith("False") and persistent[1].startswith("True")
    assert per_tile[1].split("\n", 1)[1] == persistent[1].split("\n", 1)[1]  # all that follows the flag


def test_the_persistent_gluon_kernel_deals_query_tiles_by_their_work(specs, tmp_path):
    """The schedule of the mask form (Triton kernels, run here by the interpreter on a causal block map of 16 query
    blocks, 2 x 16 heads): every tile exactly once. A persistent launch of 24 programs gets the heaviest tiles of
    the first heads first and work within 7% of even (dealt round robin in their natural order, as the dense kernel
    deals them, one program would get 43% over the mean); a launch of a program per tile gets the order itself:
    heaviest first, four heads at a time."""
    spec = load_spec(SpecFiles(str(specs / "causal.py")))
    source = render_kernel(spec.name, lower_spec(spec), KernelConfig(128, 64, 4, 4, gluon=True, persistent=True))
    found = run_interpreted(source, """
        n_m, B, H = 16, 2, 16
        summary = torch.zeros(1, 1, n_m, module.MAP_WIDTH, dtype=torch.int32)
        summary[0, 0, :, 0] = 2 * torch.arange(n_m)  # whole key blocks below the diagonal, two cut on it
        summary[0, 0, :, 2] = 2
        dealt = {}
        for programs in (24, B * H * n_m):
            offsets, tiles = module._get_schedule(("key", programs), summary, B, H, programs)
            dealt[programs] = [tiles[offsets[p]:offsets[p + 1]].tolist() for p in range(programs)]
        print(json.dumps(dealt))
    """, tmp_path)
    n_m, tiles = 16, 2 * 16 * 16
    work = lambda tile: 2 * (tile % n_m) + 3  # noqa: E731 - the blocks the map lists, plus one
    for programs, dealt in found.items():
        assert sorted(t for mine in dealt for t in mine) == list(range(tiles))
    persistent, per_tile = found["24"], found[str(tiles)]
    # dealt a few heads at a time, heaviest first: the 24 programs start on the 4 first heads' 6 heaviest blocks
    assert sorted((mine[0] for mine in persistent), key=work, reverse=True) == \
        [h * n_m + n_m - 1 - i for i in range(6) for h in range(4)]
    loads = [sum(map(work, mine)) for mine in persistent]
    round_robin = [sum(work(t) for t in range(p, tiles, 24)) for p in range(24)]
    assert max(loads) / (sum(loads) / 24) < 1.07 < max(round_robin) / (sum(round_robin) / 24)
    assert [len(mine) for mine in per_tile] == [1] * tiles
    assert [mine[0] for mine in per_tile] == dealing_order(2 * 16, n_m)


def dealing_order(heads: int, n_m: int) -> list[int]:
    """The schedule's order of query tiles (batch * H + head) * n_m + block: heaviest block first, 4 heads at a time."""
    return [(first + h) * n_m + m for first in range(0, heads, 4) for m in reversed(range(n_m)) for h in range(4)]


def least_loaded_deal(work: list[int], order: list[int], programs: int) -> list[list[int]]:
    """The persistent schedule's deal, replayed: each tile in order to the least loaded program (lowest first)."""
    loads, dealt = [0] * programs, [[] for _ in range(programs)]
    for tile in order:
        p = loads.index(min(loads))
        dealt[p].append(tile)
        loads[p] += work[tile]
    return dealt


def test_the_persistent_gluon_kernel_evens_out_what_whole_tiles_leave(specs, tmp_path):
    """Key padding deals two kinds of tile, a batch's of 32 whole key blocks and the other's of 23 whole and one
    cut, to 20 programs (run by the interpreter): the least-loaded deal leaves the busiest 7% above the mean, since
    a tile is all it can move. Swapping heavy for light tiles between the busiest and the least busy brings it
    within 2.5%, each tile still dealt once and each program running as many tiles as the deal gave it."""
    spec = load_spec(SpecFiles(str(specs / "key_padding.py")))
    source = render_kernel(spec.name, lower_spec(spec), KernelConfig(128, 128, 4, 2, gluon=True, persistent=True))
    B, H, n_m, programs = 2, 4, 16, 20
    found = run_interpreted(source, f"""
        summary = torch.zeros({B}, 1, {n_m}, module.MAP_WIDTH, dtype=torch.int32)
        summary[0, 0, :, 0], summary[1, 0, :, 0], summary[1, 0, :, 2] = 32, 23, 1
        offsets, tiles = module._get_schedule(("key", 1), summary, {B}, {H}, {programs})
        print(json.dumps([tiles[offsets[p]:offsets[p + 1]].tolist() for p in range({programs})]))
    """, tmp_path)
    work = [33 if tile < H * n_m else 25 for tile in range(B * H * n_m)]  # the listed blocks plus one
    dealt = least_loaded_deal(work, dealing_order(B * H, n_m), programs)
    balance = lambda lists: max(loads := [sum(work[t] for t in mine) for mine in lists]) / (sum(loads) / programs)  # noqa: E731
    assert sorted(t for mine in found for t in mine) == list(range(B * H * n_m))
    assert [len(mine) for mine in found] == [len(mine) for mine in dealt]
    assert balance(dealt) > 1.07 and balance(found) < 1.025


def test_the_gluon_kernel_works_out_each_shared_layout_once(specs, tmp_path):
    """A copy-engine descriptor's shared-memory layout depends only on its block and dtype. Worked out on every
    call it took about a sixth of the host's time per call (H200, cProfile), as long as a short kernel runs. Each
    call's descriptors are of its own tensors, on the one layout: the same as one worked out afresh."""
    spec = load_spec(SpecFiles(str(specs / "noop.py")))
    source = render_kernel(spec.name, lower_spec(spec), KernelConfig(128, 128, 4, 2, gluon=True, persistent=True))
    found = run_interpreted(source, """
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        def afresh(t, rows):
            block = [1, 1, rows, t.shape[3]]
            return TensorDescriptor.from_tensor(t, block, module.gl.NVMMASharedLayout.get_default_for(
                block, module.GL_DTYPES[t.dtype]))

        same = []
        for dtype in (torch.float16, torch.bfloat16) * 3:
            for rows in (64, 128):
                t = torch.randn(2, 4, 256, 64, dtype=dtype)
                made, expected = module._descriptor(t, rows), afresh(t, rows)
                same.append(made.base is t and [made.shape, made.strides, made.block_shape, made.layout] ==
                            [expected.shape, expected.strides, expected.block_shape, expected.layout])
        info = module._shared_layout.cache_info()
        print(json.dumps({"same": same, "worked_out": info.misses, "reused": info.hits}))
    """, tmp_path)
    assert found == {"same": [True] * 12, "worked_out": 4, "reused": 8}


@pytest.mark.parametrize("name", ["noop", "softcap"])
def test_the_gluon_kernel_runs_the_softmax_the_interpreter_tests(specs, name):
    """Gluon has no CPU interpreter, so its softmax step is the Triton function every template shares: what the
    CPU suite (negative scales, ragged lengths, masked rows) checks in the Triton kernel is what the GPU runs."""
    import re

    spec = load_spec(SpecFiles(str(specs / f"{name}.py")))
    lowered = lower_spec(spec)
    gluon = render_kernel(spec.name, lowered, KernelConfig(128, 64, 4, 4, gluon=True))
    triton_kernel = render_kernel(spec.name, lowered, CONFIG)

    def helper(source):
        return re.search(r"@triton.jit\ndef _online_softmax\(.*?\n    return [^\n]*\n", source, re.S).group(0)

    assert helper(gluon) == helper(triton_kernel)
    assert "= _online_softmax(" in gluon.split("def _softmax_step(")[1].split("\ndef ")[0]
    # no second softmax beside it; only the row max's reduction at D64 with 128-key blocks is the Gluon kernel's
    # own (`_row_max_in_chains`: a reshape and two maxima, run on the GPU only, by tests/test_gpu_verifier.py)
    assert "gl.exp2" not in gluon
    chains = re.search(r"@gluon.jit\ndef _row_max_in_chains\(.*?\n    return [^\n]*\n", gluon, re.S).group(0)
    assert gluon.count("gl.max(") == chains.count("gl.max(") == 2

def test_the_config_search_refines_its_fastest_first_config_until_nothing_new_is_left():
    first = [KernelConfig(128, 128, 8, 3, tma=True), KernelConfig(64, 64, 4, 3, tma=True)]
    search = ConfigSearch(list(first + first[:1]))  # a repeated config is tried once
    times = {first[0]: 2.0, first[1]: 1.0, KernelConfig(64, 64, 4, 2, tma=True): 1.5,
             KernelConfig(64, 64, 4, 4, tma=True): 0.5, KernelConfig(64, 64, 4, 5, tma=True): None}
    order = []
    while (cfg := search.next()) is not None:
        order.append(cfg)
        search.record(cfg, times[cfg])
    # the stages of the winner of the first round, then of the new winner (4 stages), then the search ends
    assert order == first + [KernelConfig(64, 64, 4, s, tma=True) for s in (2, 4, 5)]
    fixed = ConfigSearch(list(first), refine=False)
    assert [fixed.next(), fixed.record(first[0], 1.0), fixed.next(), fixed.record(first[1], 2.0), fixed.next()] \
        == [first[0], None, first[1], None, None]


def test_refinements_move_the_stages_of_the_fastest_config_only():
    fast, slow = KernelConfig(128, 128, 8, 3, tma=True), KernelConfig(64, 64, 4, 3)
    near = refinements({fast: 1.0, slow: 2.0, KernelConfig(64, 64, 4, 2): None})
    assert near == [KernelConfig(128, 128, 8, 2, tma=True), KernelConfig(128, 128, 8, 4, tma=True)]
    assert refinements({fast: 1.0, **{c: 1.5 for c in near}}) == []  # nothing new left: the search ends
    assert refinements({slow: None}) == []  # nothing timed, nothing to refine


def test_the_gluon_kernel_is_never_tried_with_one_stage(specs):
    """It issues the next block's QK^T before this block's PV, so one stage would leave the loader waiting for a
    stage the consumers hold: the kernel hung on an H200 when the search refined a two-stage winner down to one.
    The search stops at two, and rendering one is an error rather than a hang."""
    gluon, triton_kernel = KernelConfig(128, 128, 4, 2, gluon=True), KernelConfig(64, 64, 4, 2, tma=True)
    assert refinements({gluon: 1.0}) == [KernelConfig(128, 128, 4, 3, gluon=True)]
    assert KernelConfig(64, 64, 4, 1, tma=True) in refinements({triton_kernel: 1.0})
    lowered = lower_spec(load_spec(SpecFiles(str(specs / "noop.py"))))
    with pytest.raises(ValueError, match="two stages or more"):
        render_kernel("noop", lowered, KernelConfig(128, 128, 4, 1, gluon=True))


def test_config_labels_read_back():
    """The benchmark's --configs takes the labels that reports print."""
    for cfg in (KernelConfig(64, 128, 4, 2, tma=True), KernelConfig(128, 64, 8, 3), KernelConfig(32, 32, 4, 1),
                KernelConfig(128, 64, 4, 4, gluon=True, persistent=True)):
        assert KernelConfig.from_label(cfg.label()) == cfg
    with pytest.raises(ValueError, match="not a config label"):
        KernelConfig.from_label("BM64 BN64 w4")


def test_refinements_skip_configs_that_do_not_fit_the_shared_memory():
    from agent.proposers import descriptor_shared_bytes

    best = KernelConfig(128, 128, 8, 3, tma=True)
    h100 = lambda cfg: descriptor_shared_bytes(cfg, 128) <= 232448  # noqa: E731 - the H100's limit per block
    assert refinements({best: 1.0}, h100) == [KernelConfig(128, 128, 8, 2, tma=True)]  # no 4th stage
    assert descriptor_shared_bytes(KernelConfig(64, 64, 4, 3), 128) is None  # pointer loads: not estimated


def test_the_profiling_runner_runs_a_built_in_kernel(specs, tmp_path):
    """benchmarks/run_kernel.py, what ncu profiles on the GPU, here under the interpreter with a mask and a buffer;
    the kernel's module file it writes is gone when it exits."""
    runner = Path(__file__).resolve().parents[1] / "benchmarks" / "run_kernel.py"
    result = subprocess.run([sys.executable, str(runner), str(specs / "key_padding.py"), "BM32 BN32 w4 s2",
                             "--shape", "1x2x64x16", "--device", "cpu", "--calls", "2"],
                            env={**os.environ, "TRITON_INTERPRET": "1", "TMPDIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 calls of key_padding (BM32 BN32 w4 s2) at 1x2x64x16" in result.stdout
    assert list(tmp_path.rglob("*.py")) == []  # (torch may make its inductor cache folder there)


@pytest.mark.parametrize("args", [[], ["BM32 BN32 w4 s2", "--flash"]])
def test_the_profiling_runner_runs_a_built_in_config_or_flashattention_4_not_both(specs, args):
    """Either a config label or --flash (FlashAttention-4 through flex, for a profiler to read beside it)."""
    runner = Path(__file__).resolve().parents[1] / "benchmarks" / "run_kernel.py"
    result = subprocess.run([sys.executable, str(runner), str(specs / "noop.py"), *args, "--device", "cpu"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "give a built-in config label, or --flash" in result.stderr


LINEAR_BIASES = {  # score_mod bodies, and whether the lowering proves them score + a bias linear in the indices
    "score + (kv_idx - q_idx) * torch.exp2(-(h + 1.0))": True,  # ALiBi
    "score + (q_idx - kv_idx)": True,
    "-(kv_idx - score) + 2 * q_idx - h / 4": True,
    "score + by_head[h] * kv_idx": True,  # a buffer read at [h] is uniform over a tile
    "score * 2 + q_idx": False,  # the score scaled: not score + bias
    "score + q_idx * kv_idx": False,
    "score + (q_idx - kv_idx) % 7": False,
    "torch.tanh(score) + kv_idx": False,
    "score + by_query[q_idx]": False,  # a bias of q_idx, but not a linear one
    "score.to(torch.bfloat16) + kv_idx": False,  # the score rounded
    "score + h": False,  # no index: nothing to gain
}


@pytest.mark.parametrize("body", LINEAR_BIASES)
def test_the_lowering_proves_which_score_mods_add_a_linear_bias(tmp_path, body):
    path = write_spec(tmp_path, "bias", f"""
        by_head = torch.linspace(-1, 1, 16)
        by_query = torch.linspace(-1, 1, 4096)

        def score_mod(score, b, h, q_idx, kv_idx):
            return {body}
    """)
    assert lower_spec(load_spec(SpecFiles(path))).score.linear_bias is LINEAR_BIASES[body]


def test_a_linear_bias_is_added_by_block_and_the_verifier_accepts_it(tmp_path, verifier):
    # offsets far from zero, a per-head slope, a mask that empties rows, GQA and ragged lengths (the verifier's
    # shapes): the row and column vectors must add up to the score_mod on every score
    path = write_spec(tmp_path, "shifted_alibi", """
        def score_mod(score, b, h, q_idx, kv_idx):
            return score + (kv_idx - q_idx + 1000) * torch.exp2(-(h + 1.0)) - 0.5 * q_idx + 300.0

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx % 5 != 2)
    """)
    source = builtin_kernel(path)
    assert "_bias_of_block(" in source and "_score_mod(qk" not in source
    verdict = verifier(path, path).verify(source)
    assert verdict.accepted, verdict.message


def test_a_score_mod_that_is_not_a_linear_bias_is_evaluated_on_every_score(specs):
    source = builtin_kernel(specs / "softcap.py")
    assert "_score_mod(qk * qk_scale" in source and "_bias_of_block" not in source


@pytest.mark.parametrize("gluon", [False, True])
def test_a_linear_bias_is_added_by_block_at_64_key_blocks_only(specs, gluon):
    spec = load_spec(SpecFiles(str(specs / "alibi.py")))
    lowered = lower_spec(spec)
    narrow, wide = (render_kernel(spec.name, lowered, KernelConfig(128, n, 4, 3, tma=not gluon, gluon=gluon))
                    for n in (64, 128))
    assert "= _bias_of_block(" in narrow and "_bias_of_block" not in wide  # slower at 128 (measured on an H200)
    assert "s = _score_mod(" in wide and "s = _score_mod(" not in narrow  # on every score
