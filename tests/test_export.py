"""`kgen export`: a real offline run for a spec with a captured tensor, exported, then imported in a fresh
process under Triton's interpreter with kgen itself made unimportable: it must match a float64 reference and
the kernel it came from, refuse bad inputs clearly, refuse gradients, and work under torch.compile."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

ROOT = Path(__file__).resolve().parents[1]
SPEC = '''# A per-head distance bias whose slopes are a captured tensor, under a causal mask.
import torch

slopes = torch.tensor([0.5, 0.125], dtype=torch.float32)


def score_mod(score, b, h, q_idx, kv_idx):
    return score + (kv_idx - q_idx) * slopes[h]


def mask_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx
'''
STDLIB_AND_TORCH = {"base64", "io", "linecache", "os", "sys", "types", "typing", "torch"}

# Runs in a fresh interpreter: kgen's packages cannot be imported, so the module must stand alone.
CHECK = r'''
import importlib.abc, importlib.util, json, sys, time
from pathlib import Path


class NoKgen(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("agent", "verifier", "prompts", "cli"):
            raise ImportError(f"the exported module imported kgen's {name}")


sys.meta_path.insert(0, NoKgen())
import torch


def load(path):
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def reference(q, k, v, slopes, scale=None):
    """float64, straight from the spec's definition."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = q @ k.transpose(-1, -2) * (scale or q.shape[-1] ** -0.5)
    i, j = torch.arange(q.shape[2]).view(-1, 1), torch.arange(k.shape[2]).view(1, -1)
    s = s + (j - i) * slopes.double().view(1, -1, 1, 1)
    return s.masked_fill(i < j, float("-inf")).softmax(-1) @ v


def error_of(fn):
    try:
        fn()
    except Exception as e:
        return [type(e).__name__, [c.__name__ for c in type(e).__mro__], str(e)]
    return None


def max_error(out, ref):
    return (out.double() - ref).abs().max().item()


mod = load(sys.argv[1])
original = load(sys.argv[2])
slopes = torch.tensor([0.5, 0.125])
torch.manual_seed(0)
q, k, v = (torch.randn(2, 2, 48, 16, dtype=torch.float16) for _ in range(3))
k1, v1 = k[:, :1].contiguous(), v[:, :1].contiguous()  # GQA: one kv head for two query heads
with torch.inference_mode():  # a first call there must not leave inference tensors in the module's caches
    o = mod.attention(q, k, v)
report = {
    "error": max_error(o, reference(q, k, v, slopes)),
    "scale_error": max_error(mod.attention(q, k, v, scale=0.1), reference(q, k, v, slopes, scale=0.1)),
    "same_as_original": torch.equal(o, original.attention(q, k, v, slopes=slopes)),
    "op": str(mod._op),
    "buffers_ordinary": not any(t.is_inference() for t in mod._buffers_on(q.device).values()),
    "opcheck": torch.library.opcheck(mod._op, (q, k, v, None), test_utils=("test_schema", "test_faketensor")),
    "errors": {
        "3-D q": error_of(lambda: mod.attention(q[0], k, v)),
        "unverified group": error_of(lambda: mod.attention(q, k1, v1)),  # the run was verified without GQA
        "unverified head_dim": error_of(lambda: mod.attention(q[..., :8], k[..., :8], v[..., :8])),
        "head dims": error_of(lambda: mod.attention(q, k[..., :8], v[..., :8])),
        "heads": error_of(lambda: mod.attention(q.repeat(1, 2, 1, 1)[:, :3], k, v)),
        "mixed dtypes": error_of(lambda: mod.attention(q, k.float(), v)),
        "fp32": error_of(lambda: mod.attention(q.float(), k.float(), v.float())),
        "two devices": error_of(lambda: mod.attention(q, k.to("meta"), v)),
        "grad": error_of(lambda: mod.attention(q.clone().requires_grad_(), k, v)),
    },
    "compiled": {},
}
with torch.no_grad():
    report["no_grad_ok"] = torch.equal(o, mod.attention(q.clone().requires_grad_(), k, v))
for backend in sys.argv[3:]:
    torch._dynamo.reset()
    start = time.time()
    fn = lambda q, k, v: mod.attention(q * 2.0, k, v) + 1.0  # noqa: E731
    whole = torch.compile(fn, backend=backend, fullgraph=True)  # fullgraph: no graph break allowed
    try:
        same = torch.equal(whole(q, k, v), fn(q, k, v))
        report["compiled"][backend] = {
            "same": same, "seconds": time.time() - start,
            "grad": error_of(lambda: torch.compile(fn, backend=backend)(q.clone().requires_grad_(), k, v)),
            "grad_fullgraph": error_of(lambda: whole(q.clone().requires_grad_(), k, v))}
    except Exception as e:
        report["compiled"][backend] = {"failed": f"{type(e).__name__}: {e}"[:2000]}
print("REPORT " + json.dumps(report))
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One real offline run (built-in proposer) for the slopes spec."""
    tmp = tmp_path_factory.mktemp("export")
    (tmp / "slopes.py").write_text(SPEC)
    result = subprocess.run([sys.executable, "-m", "cli", "attention", "--score-mod", str(tmp / "slopes.py"),
                             "--batch", "2", "--heads", "2", "--seq-len", "48", "--head-dim", "16", "--device", "cpu",
                             "--runs-dir", str(tmp / "runs")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KGEN_CACHE_DIR": str(tmp / "cache")})
    assert result.returncode == 0, result.stderr
    (path,) = (tmp / "runs").iterdir()
    return path


@pytest.fixture(scope="module")
def exported(run) -> Path:
    out = run.parent.parent / "slopes_attention.py"
    result = CliRunner().invoke(app, ["export", str(run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "torch.ops.kgen_slopes_" in result.stdout and "from slopes_attention import attention" in result.stdout
    return out


def check(module: Path, original: Path, *backends: str, interpret: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run([sys.executable, "-c", CHECK, str(module), str(original), *backends],
                            cwd=module.parent, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    return json.loads(line.removeprefix("REPORT "))


def test_module_stands_alone_with_the_kernel_unchanged_and_the_spec_bound_in(run, exported):
    text = exported.read_text()
    tree = ast.parse(text)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= STDLIB_AND_TORCH
    assert (run / "attempts" / "0001" / "kernel.py").read_text() in text  # verbatim, as verified
    assert "#   slopes: [2] float32 = [0.5, 0.125]" in text  # the captured tensor, bound in
    assert "#     return score + (kv_idx - q_idx) * slopes[h]" in text  # the spec, for provenance
    assert f"# run {run.name}, attempt 1 (builtin:" in text
    assert ("# verified on B2 H2 N48 D16 bf16 on cpu (under Triton's interpreter, on shapes capped at B2 H2 N48 D16; "
            "bf16 run as fp16)") in text


def test_round_trip_under_the_interpreter_and_torch_compile(run, exported):
    report = check(exported, run / "best" / "kernel.py", "eager", "aot_eager", "inductor")
    assert report["error"] < 1e-2 and report["scale_error"] < 1e-2
    assert report["same_as_original"] is True  # the kernel it came from, given the spec's tensor by hand
    assert "kgen_slopes_" in report["op"] and report["buffers_ordinary"]
    assert report["opcheck"] == {"test_schema": "SUCCESS", "test_faketensor": "SUCCESS"}
    errors = report["errors"]
    assert errors["3-D q"][0] == "ValueError" and "expected 4-D q [B, H, Sq, D]" in errors["3-D q"][2]
    assert errors["head dims"][0] == "ValueError" and "head_dim" in errors["head dims"][2]
    # what the run did not verify is refused, with the run that would
    assert errors["unverified group"][0] == "ValueError"
    assert "verified with 1 query head(s) per key/value head; got 2 (2 and 1 heads)" in errors["unverified group"][2]
    assert "--heads 2 --kv-heads 1" in errors["unverified group"][2]
    assert errors["unverified head_dim"][0] == "ValueError"
    assert "verified at head_dim 16; got 8" in errors["unverified head_dim"][2]
    assert "--head-dim 8" in errors["unverified head_dim"][2]
    assert errors["heads"][0] == "ValueError" and "3 heads are not a multiple of k and v's 2" in errors["heads"][2]
    assert errors["mixed dtypes"][0] == "TypeError" and "one dtype" in errors["mixed dtypes"][2]
    assert errors["fp32"][0] == "TypeError" and "float16 and bfloat16" in errors["fp32"][2]
    assert errors["two devices"][0] == "ValueError" and "one device" in errors["two devices"][2]
    assert errors["grad"][0] == "ForwardOnlyError" and "NotImplementedError" in errors["grad"][1]
    assert "forward only" in errors["grad"][2] and "torch.no_grad()" in errors["grad"][2]
    assert report["no_grad_ok"] is True
    for backend in ("eager", "aot_eager"):
        assert report["compiled"][backend]["same"] is True, report["compiled"][backend]
        assert report["compiled"][backend]["grad"][0] == "ForwardOnlyError"
        # fullgraph=True turns any exception into dynamo's Unsupported; ours is still in its message
        assert "is forward only" in report["compiled"][backend]["grad_fullgraph"][2]
    inductor = report["compiled"]["inductor"]
    if "failed" in inductor and "C++ compiler" in inductor["failed"]:
        pytest.skip(f"inductor needs a C++ compiler here: {inductor['failed'][:200]}")
    assert inductor.get("same") is True, inductor


def test_cpu_without_the_interpreter_says_how(exported):
    script = (f"import sys; sys.path.insert(0, {str(exported.parent)!r}); import torch, slopes_attention as m\n"
              "q = torch.randn(1, 2, 8, 16, dtype=torch.float16)\n"
              "m.attention(q, q, q)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "ValueError: the kernel runs on CUDA GPUs; q, k and v are on the CPU" in result.stderr
    assert "TRITON_INTERPRET=1" in result.stderr


def test_export_from_kernel_files(run, exported, tmp_path):
    """A kernel file inside a run takes that run's spec; a loose one takes the spec given on the command line.
    The op's name hashes the kernel, the bound tensors and the head_dim and GQA group the module admits, so equal
    names mean the same module contents: the loose file's module admits any, so its op is another."""
    namespace = _namespace(exported)
    in_run = tmp_path / "from_run_file.py"
    assert CliRunner().invoke(app, ["export", str(run / "best" / "kernel.py"), "-o", str(in_run)]).exit_code == 0
    assert _namespace(in_run) == namespace
    loose = tmp_path / "mine.py"
    shutil.copy(run / "attempts" / "0001" / "kernel.py", loose)
    out = tmp_path / "from_loose.py"
    result = CliRunner().invoke(app, ["export", str(loose), "--score-mod", str(run.parent.parent / "slopes.py"),
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "not checked by kgen here" in out.read_text() and "VERIFIED_HEAD_DIM = None" in out.read_text()
    assert _namespace(out) != namespace and _namespace(out).split("_")[:-1] == namespace.split("_")[:-1]


def test_export_usage_errors(run, tmp_path):
    for args, message in ((["nosuchrun", "--runs-dir", str(run.parent)], "no run named 'nosuchrun'"),
                          ([str(run), "-o", str(tmp_path / "x.txt")], "must be a .py file")):
        result = CliRunner().invoke(app, ["export", *args] + ([] if "-o" in args else ["-o", str(tmp_path / "y.py")]))
        assert result.exit_code == 2 and message in said(result)


def test_example_block_matches_flex_with_the_exported_kernel(run, exported):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "gpt_block.py"), "--spec",
                             str(run.parent.parent / "slopes.py"), "--kernel", str(exported), "--batch", "2",
                             "--seq-len", "48", "--heads", "2", "--head-dim", "16"],
                            env={**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""},  # the CPU path
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "max |flex - kgen|" in result.stdout and "float16 cpu" in result.stdout


GUARDED = r'''
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
import gqa_attention as m

torch.manual_seed(0)
q, k, v = torch.randn(1, 4, 40, 16, dtype=torch.float16), *(torch.randn(1, 2, 40, 16, dtype=torch.float16)
                                                            for _ in range(2))
ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), enable_gqa=True)
try:
    m.attention(q, q, q)
    refused = None
except ValueError as e:
    refused = str(e)
print("REPORT " + json.dumps({"error": (m.attention(q, k, v).double() - ref).abs().max().item(), "refused": refused}))
'''


def test_a_module_runs_the_gqa_group_its_run_verified_and_refuses_others(tmp_path):
    """A run verified with GQA (4 query heads on 2 key/value heads) exports a module that computes GQA calls and
    refuses plain multi-head ones; a loose kernel file, which kgen has not checked, gets no such guard."""
    from agent.export import NO_SPEC, Exportable, write_module
    from kernels import flash_source
    from verifier.problem import Shape

    item = Exportable(flash_source(), "noop", NO_SPEC, {}, ["a test"], Shape(1, 4, 2, 64, 64, 16))
    text = write_module(item, tmp_path / "gqa_attention.py").path.read_text()
    assert "VERIFIED_HEAD_DIM = 16\n" in text and "VERIFIED_GROUP = 2  #" in text
    assert "Verified at head_dim 16 with 2 query head(s) per key/value head" in text
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", GUARDED, str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))
    assert report["error"] < 1e-2
    assert "verified with 2 query head(s) per key/value head; got 1 (4 and 4 heads)" in report["refused"]
    loose = write_module(Exportable(flash_source(), "noop", NO_SPEC, {}, ["a test"]), tmp_path / "loose.py")
    assert "VERIFIED_HEAD_DIM = None\n" in loose.path.read_text() and "Verified at" not in loose.path.read_text()


UNTRIED_LAYOUTS = r'''
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
import strided_attention as m

torch.manual_seed(0)
inputs = {
    # one [1, H, S, D] tensor seen as every batch element's (a stride of 0): the suite's strides are positive
    "expanded": [torch.randn(1, 3, 40, 16, dtype=torch.float16).expand(2, 3, 40, 16) for _ in range(3)],
    # [B, H, D, S] memory seen as [B, H, S, D]: the suite's last dimension is contiguous
    "columns": [torch.randn(2, 3, 16, 40, dtype=torch.float16).transpose(2, 3) for _ in range(3)],
    # contiguous, but starting 2 bytes past a 16-byte boundary (a slice of a flat buffer): the suite's inputs
    # start aligned
    "misaligned": [torch.randn(1 + 2 * 3 * 40 * 16, dtype=torch.float16)[1:].view(2, 3, 40, 16) for _ in range(3)],
    # heads 0..2 of [B, S, 5, D]: a fused projection's, as the suite tried
    "gaps": [torch.randn(2, 40, 5, 16, dtype=torch.float16)[:, :, :3].transpose(1, 2) for _ in range(3)],
}
report = {}
for name, (q, k, v) in inputs.items():
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    o = m.attention(q, k, v)
    report[name] = {"contiguous_input": q.is_contiguous(), "aligned_input": q.data_ptr() % 16 == 0,
                    "error": (o.double() - ref).abs().max().item(),
                    "output_strides_like_q": o.stride() == torch.empty_like(q).stride()}
print("REPORT " + json.dumps(report))
'''


def test_a_module_copies_inputs_in_layouts_the_suite_did_not_try(tmp_path):
    """The verifier's suite tries q, k and v contiguous, transposed, and as views into wider memory, each with
    positive strides of 16-byte multiples, a contiguous last dimension, and a start on a 16-byte boundary. Any
    other input reaches the kernel as a contiguous copy in fresh memory: a kernel that handles only what it was
    tried on stays right. Here the kernel works its strides out from the shapes (contiguous memory only) and, as
    the copy engine does, refuses a misaligned start; it is handed a batch expanded from one (a stride of 0),
    columns ([B, H, D, S] memory) and a contiguous slice 2 bytes off the boundary. A view with gaps, which the
    suite did try, goes through as it is."""
    from agent.export import NO_SPEC, Exportable, write_module
    from kernels import flash_source
    from verifier.problem import Shape

    strides = "*q.stride()[:3], *k.stride()[:3], *v.stride()[:3]"
    assumed = "H * SQ * D, SQ * D, D, HK * SKV * D, SKV * D, D, HK * SKV * D, SKV * D, D"
    entry = "    B, H, SQ, D = q.shape\n"
    aligned_only = "    assert all(t.data_ptr() % 16 == 0 for t in (q, k, v)), 'base must be 16-byte aligned'\n"
    kernel = flash_source()
    assert strides in kernel and kernel.count(entry) == 1
    kernel = kernel.replace(strides, assumed).replace(entry, aligned_only + entry)
    item = Exportable(kernel, "noop", NO_SPEC, {}, ["a test"], Shape(2, 3, 3, 40, 40, 16))
    write_module(item, tmp_path / "strided_attention.py")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", UNTRIED_LAYOUTS, str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))
    assert report["misaligned"]["contiguous_input"] is True and report["misaligned"]["aligned_input"] is False
    for name in ("expanded", "columns", "misaligned"):
        assert report[name]["error"] < 1e-2 and report[name]["output_strides_like_q"] is True, name
    assert report["expanded"]["contiguous_input"] is report["columns"]["contiguous_input"] is False
    # a view with gaps reaches the kernel as it is: this kernel, which reads no strides, gets it wrong
    assert report["gaps"]["error"] > 0.1


EMPTY_PROBLEMS = r'''
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
import untried_attention as m

report = {}
for name, (B, SQ, SKV) in {"no queries": (2, 0, 40), "no keys": (2, 40, 0), "no batch": (0, 40, 40)}.items():
    q = torch.randn(B, 3, SQ, 16, dtype=torch.float16)
    k, v = (torch.randn(B, 3, SKV, 16, dtype=torch.float16) for _ in range(2))
    o = m.attention(q, k, v)
    report[name] = [list(o.shape), o.stride() == q.stride(), bool((o == 0).all())]
try:
    m.attention(*(torch.randn(2, 3, 40, 16, dtype=torch.float16) for _ in range(3)))
except RuntimeError as e:
    report["a problem with work"] = str(e)
print("REPORT " + json.dumps(report))
'''


def test_a_module_answers_problems_with_a_dimension_of_0_without_its_kernel(tmp_path):
    """The suite never tries a dimension of 0, so the module does not hand one to the kernel: no queries or no
    batch give an empty output, no keys zeros (every row is empty). The kernel here raises whenever it is called."""
    from agent.export import NO_SPEC, Exportable, write_module
    from kernels import flash_source
    from verifier.problem import Shape

    entry = "    B, H, SQ, D = q.shape\n"
    kernel = flash_source()
    assert kernel.count(entry) == 1
    kernel = kernel.replace(entry, "    raise RuntimeError('the kernel was called')\n" + entry)
    write_module(Exportable(kernel, "noop", NO_SPEC, {}, ["a test"], Shape(2, 3, 3, 40, 40, 16)),
                 tmp_path / "untried_attention.py")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", EMPTY_PROBLEMS, str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert json.loads(line.removeprefix("REPORT ")) == {
        "no queries": [[2, 3, 0, 16], True, True], "no keys": [[2, 3, 40, 16], True, True],
        "no batch": [[0, 3, 40, 16], True, True], "a problem with work": "the kernel was called"}


def said(result) -> str:
    """Everything printed, stdout and stderr, with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _namespace(module: Path) -> str:
    (line,) = [line for line in module.read_text().splitlines() if line.startswith("OP = ")]
    return line
