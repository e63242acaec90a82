"""What a kernel is compared with on a GPU: FlexAttention (torch.compile'd, same spec, same inputs), SDPA
where the spec is plain or causal, and the GPU's measured matmul peak.

Measured once per problem in a child process and cached on disk (keyed by spec text, shape, dtype, GPU,
torch and triton versions), since compiling flex takes a while. Run as `python -m verifier.baseline JOB`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from verifier import gpu_turns
from verifier.gpu_turns import Turns, lock_path
from verifier.problem import DTYPES, Problem, Shape
from verifier.sandbox import Limits, run_child

FLEX_MODES = {"default": None, "max-autotune": "max-autotune-no-cudagraphs"}
# flex's FLASH backend runs FlashAttention-4's CuTe DSL kernels (needs the flash-attn-4 package): compiled in the
# default mode, with the backend chosen through kernel_options (the benchmark's "flash" column)
FLEX_BACKENDS = {"flash": ("default", {"BACKEND": "FLASH"})}


@dataclass
class Baseline:
    gpu: str = ""
    flex_ms: float | None = None  # torch.compile default mode
    flex_autotune_ms: float | None = None  # only when asked for (slow to compile)
    sdpa_ms: float | None = None
    sdpa_kind: str | None = None  # plain | causal | None when SDPA cannot express the spec
    peak_tflops: float | None = None
    error: str | None = None
    # the GPU's turns its timing waited for (verifier.gpu_turns.Wait as dicts), in the run that measured it only
    turn_waits: list[dict] = field(default_factory=list)

    @property
    def timed_alone(self) -> bool:
        """Whether every timing had the GPU's turn. One that went ahead without may have run beside another
        verification's work, its matmul peak too (which the implausible-speed check trusts): not cached."""
        return all(w.get("had", True) for w in self.turn_waits)


def cache_dir() -> Path:
    root = os.environ.get("KGEN_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kgen"
    return Path(root) / "baselines"


def cache_key(problem: Problem, modes: tuple[str, ...]) -> str:
    import triton

    text = "".join(Path(p).read_text() for p in problem.spec.paths)
    parts = [text, json.dumps(asdict(problem.shape)), problem.dtype, torch.cuda.get_device_name(), torch.__version__,
             triton.__version__, ",".join(modes)]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


def measure_baseline(problem: Problem, density: float, limits: Limits,
                     modes: tuple[str, ...] = ("default",), turns: Turns | None = None) -> Baseline:
    """`turns`: the GPU's turns its timing takes (the verifier's; by default the problem's GPU's, with the usual
    wait)."""
    path = cache_dir() / f"{cache_key(problem, modes)}.json"
    if path.exists():
        return Baseline(**json.loads(path.read_text()))
    turns = turns or Turns(lock_path(problem.device))
    job = {"spec": asdict(problem.spec), "shape": asdict(problem.shape), "dtype": problem.dtype, "modes": list(modes),
           **turns.job()}  # its timing takes the GPU's turn
    with tempfile.TemporaryDirectory(prefix="kgen-baseline-") as tmp:
        # compiling flex (max-autotune above all) takes minutes: give it room
        child = run_child(job, Path(tmp), Limits(compile_s=max(limits.compile_s, 900), call_s=max(limits.call_s, 600)),
                          module="verifier.baseline")
    record = next((r for r in child.records if "baseline" in r), None)
    if record is None:
        reason = (child.error or {}).get("message") or f"{child.status} during {child.phase}: {child.stderr_tail[-400:]}"
        return Baseline(error=f"baseline not measured: {reason}")
    baseline = Baseline(**record["baseline"])
    if baseline.timed_alone:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(replace(baseline, turn_waits=[]))))  # waited once, not at each reading
    return baseline


# ------------------------------------------------------------------------------------------ in the child
def sdpa_kind(spec, shape: Shape) -> str | None:
    """'plain' or 'causal' when SDPA computes exactly this spec, else None."""
    from verifier.reference import buffers_on
    from verifier.spec import index_grid

    if spec.score_mod is not None:
        return None
    if spec.mask_mod is None:
        return "plain"
    if shape.seq_len != shape.kv_seq_len:
        return None
    rows = torch.linspace(0, shape.seq_len - 1, min(shape.seq_len, 257)).long().unique()
    with buffers_on(spec, {n: t for n, t in spec.buffers.items()}):
        b, h, q, kv = index_grid(shape, rows, "cpu")
        keep = torch.broadcast_to(spec.mask_mod(b, h, q, kv), (shape.batch, shape.heads, len(rows), shape.kv_seq_len))
    return "causal" if torch.equal(keep, (q >= kv).expand_as(keep)) else None


def flex_call(spec, shape: Shape, mode: str):
    """flex_attention compiled for the spec at the shape, as a function of q, k, v: `mode` is a compile mode
    ("default", "max-autotune") or a backend of FLEX_BACKENDS ("flash"). Call it with the spec's buffers on the
    GPU (reference.buffers_on)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = None
    if spec.mask_mod is not None:
        block_mask = create_block_mask(spec.mask_mod, shape.batch, shape.heads, shape.seq_len, shape.kv_seq_len,
                                       device="cuda")
    compile_mode, kernel_options = FLEX_BACKENDS.get(mode, (mode, None))
    compiled = torch.compile(flex_attention, mode=FLEX_MODES[compile_mode], dynamic=False)
    gqa = shape.heads != shape.kv_heads
    return lambda q, k, v, **_: compiled(q, k, v, score_mod=spec.score_mod, block_mask=block_mask, enable_gqa=gqa,
                                         kernel_options=kernel_options)


def run(job: dict, channel) -> dict:
    import torch.nn.functional as F

    from verifier import timing
    from verifier.reference import buffers_on
    from verifier.spec import SpecFiles, load_spec
    from verifier.suite import Trial, make_inputs

    spec = load_spec(SpecFiles(**job["spec"]))
    shape, dtype = Shape(**job["shape"]), DTYPES[job["dtype"]]
    sets = [make_inputs(Trial(id=f"s{i}", purpose="baseline", shape=shape, seed=9001 + i), dtype, "cuda")
            for i in range(3)]
    result = Baseline(gpu=torch.cuda.get_device_name())
    gqa = shape.heads != shape.kv_heads
    turns = Turns.from_job(job)
    with buffers_on(spec, {n: t.cuda() for n, t in spec.buffers.items()}):
        for mode in job["modes"]:
            channel.phase(f"compile flex ({mode})", limit="compile")
            call = flex_call(spec, shape, mode)
            call(*sets[0])  # compiled (max-autotune: for minutes) before the turn, which only the timing needs
            torch.cuda.synchronize()
            with gpu_turns.in_child(turns, channel, f"timing the baseline's flex ({mode})"):
                channel.phase(f"time flex ({mode})")
                t = timing.time_calls(lambda i, call=call: call(*sets[i]), len(sets))
            setattr(result, "flex_ms" if mode == "default" else "flex_autotune_ms", t.ms)
    result.sdpa_kind = sdpa_kind(spec, shape)
    with gpu_turns.in_child(turns, channel, "timing the baseline's SDPA and matmul peak"):
        if result.sdpa_kind:
            channel.phase("sdpa")

            def sdpa(i):
                q, k, v = sets[i]
                return F.scaled_dot_product_attention(q, k, v, is_causal=result.sdpa_kind == "causal",
                                                      enable_gqa=gqa)

            result.sdpa_ms = timing.time_calls(sdpa, len(sets)).ms
        channel.phase("matmul peak")
        result.peak_tflops = timing.matmul_peak_tflops(dtype)
    result.turn_waits = [asdict(w) for w in turns.waits]
    return asdict(result)


def main(job_path: str) -> int:
    from verifier.child import Channel

    job = json.loads(Path(job_path).read_text())
    channel = Channel(job["channel_fd"])
    try:
        channel.record({"baseline": run(job, channel)})
    except Exception as e:  # noqa: BLE001 - reported to the parent, which carries on without a baseline
        channel.send("error", data={"code": "runtime_error", "type": type(e).__name__, "message": str(e)[:2000],
                                    "traceback": ""})
        return 1
    channel.send("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
