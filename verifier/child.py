"""What runs inside the sandbox: import the candidate, call it, report on the verifier's channel.

Two parts, in one process so the kernel is compiled once:
- check: call the candidate on every trial of the suite under CallWatch; save each output to a file and
  report what was observed (bad output, aliasing, mutated inputs, guard damage, library ops). The
  reference is never computed here: this process holds nothing a candidate could copy.
- time (CUDA, when the verifier says so after judging the checks): profile a call (kernels, streams,
  copies, memory), then time it; save the timed outputs for re-checking.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import resource
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from verifier import every_row, gpu_turns, guards
from verifier.gpu_memory import first_line, hand_back_cached_memory, out_of_memory, ran_out_in_own_work
from verifier.gpu_turns import Turns
from verifier.guards import CallWatch, guarded
from verifier.problem import DTYPES, Shape
from verifier.spec import SpecFiles, load_spec
from verifier.suite import RotatingInputs, Trial, make_inputs

CONTEXT_KILLERS = ("illegal memory access", "misaligned address", "unspecified launch failure",
                   "illegal instruction", "device-side assert", "cudaErrorLaunchFailure")


class Channel:
    """JSON lines to the verifier over a pipe it owns; stdout is the candidate's to print on."""

    def __init__(self, fd: int):
        os.set_inheritable(fd, False)  # processes the candidate starts must not hold our channel open
        self.file = os.fdopen(fd, "w", buffering=1)

    def send(self, kind: str, **fields) -> None:
        self.file.write(json.dumps({"kind": kind, **fields}, default=str) + "\n")
        self.file.flush()

    def phase(self, name: str, limit: str = "call", scale: float = 1.0) -> None:
        self.send("phase", phase=name, limit=limit, scale=scale)

    def record(self, data: dict) -> None:
        self.send("record", data=data)


class CandidateFailure(Exception):
    def __init__(self, code: str, exc: BaseException, kernel_path: str):
        super().__init__(code)
        self.code, self.exc, self.kernel_path = code, exc, kernel_path

    def report(self) -> dict:
        return {"code": self.code, "type": type(self.exc).__name__, "message": str(self.exc)[:3000],
                "traceback": trimmed_traceback(self.exc, self.kernel_path)}


def trimmed_traceback(exc: BaseException, kernel_path: str, limit: int = 2500) -> str:
    """The candidate's own frames and the exception: what a model needs, without torch's internals.

    Triton's interpreter and launcher wrap the real error (`raise ... from e`): its frames inside the kernel
    and its message are the useful part, so the whole cause chain is searched."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 6:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    frames = [f for e in reversed(chain) for f in traceback.extract_tb(e.__traceback__) if f.filename == kernel_path]
    frames = frames or traceback.extract_tb(exc.__traceback__)[-1:]
    root = chain[-1]
    lines = [f'  File "kernel.py", line {f.lineno}, in {f.name}\n    {(f.line or "").strip()}' for f in frames[-8:]]
    lines.append(f"{type(exc).__name__}: {exc}")
    if root is not exc:
        where = traceback.extract_tb(root.__traceback__)[-1:]
        detail = f" (raised at {Path(where[0].filename).name}:{where[0].lineno}: `{(where[0].line or '').strip()}`)" \
            if where else ""
        lines.append(f"caused by {type(root).__name__}: {root}{detail}")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[: limit // 2] + "\n...\n" + text[-limit // 2:]


def classify(exc: BaseException, during_import: bool) -> str:
    refused = _refusal(exc)
    if refused is not None:
        return refused.code  # the audit hook stopped the candidate: snooping or tampering, not a bug
    message = str(exc)
    if any(k in message for k in CONTEXT_KILLERS):
        return "crash"
    if out_of_memory(exc):
        return "out_of_memory"
    if during_import:
        return "compile_error"
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {"CompilationError", "CompileTimeAssertionFailure", "UnsupportedLanguageConstruct"}:
        return "compile_error"
    return "runtime_error"


class OutOfMemoryInCheck(RuntimeError):
    """The GPU's memory ran out in the verifier's own work on a trial (making its inputs, fingerprinting them, saving
    the output), not in the candidate's call: where other processes hold the GPU, a correct kernel can meet this.
    Measured once the trial's tensors are freed, the figures say which processes hold the GPU."""

    @classmethod
    def on(cls, trial: Trial, device: str, error: str) -> "OutOfMemoryInCheck":
        return cls(ran_out_in_own_work(f"work on trial {trial.label()} (its inputs or the check of the output, not "
                                       f"the kernel's call)", device, error))


def _refusal(exc: BaseException | None, depth: int = 0) -> guards.Refused | None:
    """The verifier's refusal, if it is this exception or what caused it (Triton wraps exceptions)."""
    if exc is None or depth > 5:
        return None
    if isinstance(exc, guards.Refused):
        return exc
    return _refusal(exc.__cause__ or exc.__context__, depth + 1)


def import_candidate(path: str):
    spec = importlib.util.spec_from_file_location("candidate_kernel", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["candidate_kernel"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - everything the candidate raises is a verdict
        raise CandidateFailure(classify(e, during_import=True), e, path) from None
    fn = getattr(module, "attention", None)
    if not callable(fn):
        raise CandidateFailure("compile_error", AttributeError("module has no callable `attention`"), path)
    return fn


def call(fn, kernel_path: str, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001
        raise CandidateFailure(classify(e, during_import=False), e, kernel_path) from None


def sync(device: str, kernel_path: str) -> None:
    if device == "cuda":
        try:
            torch.cuda.synchronize()
        except BaseException as e:  # noqa: BLE001 - a kernel fault surfaces at the next synchronize
            raise CandidateFailure(classify(e, during_import=False), e, kernel_path) from None


# ------------------------------------------------------------------------------------------------------ check
def bad_output_reason(out, q: torch.Tensor) -> str | None:
    if type(out) is not torch.Tensor:
        return f"attention returned {type(out).__module__}.{type(out).__name__}; return a plain torch.Tensor"
    wrong = [f"{what} {got} (expected {want})" for what, got, want in (
        ("shape", tuple(out.shape), tuple(q.shape)), ("dtype", out.dtype, q.dtype), ("device", out.device, q.device))
        if got != want]
    if wrong:
        return "output has " + ", ".join(wrong)
    like_q = torch.empty_like(q, device="meta").stride()  # q's strides, or dense ones in q's order if q has gaps
    if not out.is_contiguous() and out.stride() != like_q:
        return (f"output is neither contiguous nor laid out as torch.empty_like(q) (strides {out.stride()}, "
                f"empty_like(q)'s {like_q}); return a new tensor from torch.empty(q.shape, ...) or torch.empty_like(q)")
    if out.requires_grad or out.grad_fn is not None:
        return "output is part of an autograd graph; compute it with Triton, not torch ops"
    return None


def laid_out(t: torch.Tensor, layout: str, name: str) -> tuple[torch.Tensor, list]:
    """A copy of the [B, H, S, D] input `name` (q, k or v) in the trial's memory layout, and its guards."""
    label = f"the memory around {name}"
    if layout == "bshd":  # [B, S, H, D] memory, the view a model's q.transpose(1, 2) gives
        copy, guard = guarded(t.transpose(1, 2), label, halfword=guards.INPUT_GUARD)
        return copy.transpose(1, 2), [guard]
    if layout == "strided":
        return in_wider_memory(t, name)
    copy, guard = guarded(t, label, halfword=guards.INPUT_GUARD)
    return copy, [guard]


def in_wider_memory(t: torch.Tensor, name: str) -> tuple[torch.Tensor, list]:
    """`t` as a view into larger memory, as models hand their inputs over, its strides none that its shape gives
    and q's, k's and v's all different: q among more heads of a fused QKV projection, k the first positions of a
    longer KV cache, v the second half of each row of a fused K/V projection. The gaps hold the guard's NaNs (a
    kernel that reads them as data gets NaN), and a write into them is caught like one past the end."""
    B, H, S, D = t.shape
    if name == "q":  # heads 1..H of [B, S, H + 2, D]
        size, view_of = (B, S, H + 2, D), lambda m: m[:, :, 1:H + 1].transpose(1, 2)
    elif name == "k":  # positions 0..S-1 of [B, H, S + 5, D]
        size, view_of = (B, H, S + 5, D), lambda m: m[:, :, :S]
    else:  # the last D of each row of [B, S, H, 2D]
        size, view_of = (B, S, H, 2 * D), lambda m: m[..., D:].transpose(1, 2)
    memory, guard = guarded(torch.empty(size, dtype=t.dtype, device=t.device), f"the memory around {name}",
                            copy=False, halfword=guards.INPUT_GUARD)
    view = view_of(memory)
    view.copy_(t)
    return view, [guard, guards.GapGuard.around(memory, view_of, f"the memory between {name}'s rows")]


def _span(t: torch.Tensor) -> tuple[int, int]:
    start = t.untyped_storage().data_ptr()
    return start, start + t.untyped_storage().nbytes()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a.device == b.device and a0 < b1 and b0 < a1


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


class Checker:
    """Runs the trials; keeps earlier outputs alive so that reuse of their memory is visible."""

    def __init__(self, job: dict, fn, buffers: dict[str, torch.Tensor]):
        self.job, self.fn, self.buffers = job, fn, buffers
        self.device, self.dtype = job["device"], DTYPES[job["run_dtype"]]
        self.kernel = job["kernel"]
        self.out_dir = Path(job["out_dir"])
        self.earlier: list[torch.Tensor] = []
        self.buffer_copies = {n: t.clone() for n, t in buffers.items()}

    def run(self, trial: Trial) -> dict:
        try:
            return self._run(trial)
        except CandidateFailure:
            raise
        except Exception as e:  # noqa: BLE001 - the verifier's own work; only running out of memory is expected
            if not out_of_memory(e):
                raise
            error = f"{type(e).__name__}: {first_line(e)[:300]}"  # (not e: its traceback holds the tensors)
        raise CandidateFailure("out_of_memory", OutOfMemoryInCheck.on(trial, self.device, error), self.kernel)

    def _run(self, trial: Trial) -> dict:
        inputs = {}
        watched = []
        made = list(make_inputs(trial, self.dtype, self.device))
        for name in "qkv":  # each made tensor dropped once laid out: a past-limits trial's are 4 GB each
            inputs[name], layout_guards = laid_out(made.pop(0), trial.layout, name)
            watched += layout_guards
        # what each input held: a copy, or for a trial too large to copy (a sampled one), its fingerprint
        originals = {n: fingerprint(t) if trial.sample else t.clone() for n, t in inputs.items()}
        watch = CallWatch()
        started = time.perf_counter()
        with watch:
            out = call(self.fn, self.kernel, inputs["q"], inputs["k"], inputs["v"], scale=trial.scale,
                       **self.buffers)
        sync(self.device, self.kernel)
        record = {"trial": trial.id, "seconds": time.perf_counter() - started, "observations": []}
        note = record["observations"].append

        bad = bad_output_reason(out, inputs["q"])
        if bad:
            note({"code": "bad_output", "message": bad})
            return record
        for name, t in list(inputs.items()):
            if overlaps(out, t):
                note({"code": "output_aliases_input", "message": f"the output shares memory with {name}"})
        if any(overlaps(out, e) for e in self.earlier):
            note({"code": "output_aliases_input", "message": "the output reuses the memory of an earlier call's "
                                                            "output, which the caller still holds"})
        for name, t in list(inputs.items()) + list(self.buffers.items()):
            before = originals.get(name, self.buffer_copies.get(name))
            if not (fingerprint(t) == before if isinstance(before, tuple) else bitwise_equal(t, before)):
                note({"code": "input_mutated", "message": f"`{name}` was modified by the call"})
        for guard in watched + watch.log.allocations:
            if not guard.intact():
                note({"code": "out_of_bounds_write", "message": f"the call wrote outside its tensors: "
                                                                f"{guard.label} was overwritten"})
        unwritten = guards.unwritten_count(out)
        if unwritten:
            note({"code": "uninitialized_output", "message": f"{unwritten} of {out.numel()} output elements were "
                                                            f"never written (they still hold the verifier's poison)"})
        library = guards.forbidden_ops(watch.log)
        if library:
            note({"code": "forbidden_call", "message": "the call ran torch ops that do the problem's math: "
                                                      + ", ".join(library)})
        out_bytes = out.numel() * out.element_size()
        record["extra_bytes"] = max(0, sum(watch.log.allocated_bytes) - out_bytes)
        record["largest_allocation"] = max(watch.log.allocated_bytes, default=0)
        record["compute_ops"] = watch.log.compute_ops

        path = self.out_dir / f"{trial.id}.pt"
        torch.save(saved_output(out, trial), path)
        record["output"] = str(path)
        if not trial.sample:  # (a past-limits output is not held: 4 GB)
            self.earlier.append(out)
        guards.poison_(out)  # a kernel that hands this memory back later hands back poison
        return record


def saved_output(out: torch.Tensor, trial: Trial):
    """What the verifier checks (verifier.numerics.check_trial), on the CPU: the output, or for a sampled trial
    its compared heads and every row's projection (verifier.every_row)."""
    out = out.detach()
    if not trial.sample:
        return out.to("cpu", copy=True)
    b, h = (torch.tensor(i, device=out.device) for i in trial.sampled_heads())
    return {"heads": out[b, h].unsqueeze(1).cpu(), "rows": every_row.project(out, trial).cpu()}  # [n, 1, Sq, D]


def fingerprint(t: torch.Tensor) -> tuple[int, int]:
    """Two sums over a [B, H, S, D] tensor's 16-bit words (the second weighs every seventh word of a row again): a
    change to its values that leaves both alike is no accident. For tensors too large to copy; summed a chunk of
    heads at a time (every_row.head_chunks), as torch's int64 sum widens its input first (16 GB for a 4 GB q)."""
    words = t.view(torch.int16)
    total = every_seventh = 0
    for b, heads in every_row.head_chunks(words):
        total += int(words[b, heads].sum(dtype=torch.int64))
        every_seventh += int(words[b, heads, ..., ::7].sum(dtype=torch.int64))
    return total, every_seventh


def run_check(job: dict, channel: Channel, fn, buffers) -> None:
    checker = Checker(job, fn, buffers)
    turns = Turns.from_job(job)
    for i, data in enumerate(job["trials"]):
        trial = Trial.from_dict(data)
        with memory_turn(trial, turns, channel) as wait:
            # the first call compiles; later calls may compile new specialisations, but far less
            # (as may a past-limits trial: the first with so many heads, a new specialisation)
            channel.phase(trial.label(),
                          limit="compile" if i == 0 or trial.sample else "call")
            record = checker.run(trial)
            hand_back_cached_memory(trial, job["device"])  # before the turn passes to another process
        if wait is not None:
            record["turn_wait"] = asdict(wait)
        channel.record(record)


@contextmanager
def memory_turn(trial: Trial, turns: Turns, channel: Channel):
    """A past-limits trial (a sampled one: 4 GB tensors, 22 GB this process held on an H100) runs in the GPU's turn
    (verifier.gpu_turns); yields its wait, or None for any other trial, which runs at once."""
    if not trial.sample:
        yield None
        return
    with gpu_turns.in_child(turns, channel, f"the trial past the index limits ({trial.id})") as wait:
        yield wait


# ------------------------------------------------------------------------------------------------------- time
def run_time(job: dict, channel: Channel, fn, buffers) -> None:
    from verifier import timing
    from verifier.profile import profile_call

    kernel, shape = job["kernel"], Shape(**job["shape"])
    inputs = RotatingInputs(shape, DTYPES[job["run_dtype"]], "cuda", job["seeds"])
    sets = inputs.live
    stream = torch.cuda.Stream()  # the caller's stream is deliberately not the default one
    last: dict[int, torch.Tensor] = {}
    reused = []  # calls that handed back memory of an output the caller still holds

    def one(i: int):
        q, k, v = sets[i]
        out = call(fn, kernel, q, k, v, scale=None, **buffers)
        # after the launch, so this host work overlaps the kernel instead of delaying it
        if any(overlaps(out, held) for held in last.values()):
            reused.append(i)
        last[i] = out

    with torch.cuda.stream(stream):
        channel.phase("first call at the target shape", limit="compile")
        first = profile_call(lambda: one(0), job["jit_functions"])
        sync("cuda", kernel)
        channel.phase("profiled call")
        steady = profile_call(lambda: one(1 % len(sets)), job["jit_functions"])
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        one(0)
        torch.cuda.synchronize()
        out_bytes = last[0].numel() * last[0].element_size()
        extra = torch.cuda.max_memory_allocated() - base - out_bytes
        channel.phase("timing", scale=3.0)
        result = timing.time_calls(one, len(sets), prepare=inputs.refresh)
        sync("cuda", kernel)
    paths = []
    for i, out in sorted(last.items()):
        path = Path(job["out_dir"]) / f"timed_{i}.pt"
        torch.save(out.detach().to("cpu", copy=True), path)
        paths.append(str(path))
    channel.phase("what the compiler made of the kernels", limit="compile")
    channel.record({"timing": result.to_dict(), "first_call": first, "steady_call": steady,
                    "extra_bytes": max(0, extra), "outputs": paths, "gpu": torch.cuda.get_device_name(),
                    "reused_outputs": len(reused), "timed_versions": inputs.versions(),
                    "compiled": compiler_report()})


def compiler_report() -> list[dict]:
    """Registers, spills and ptxas's warnings for each kernel the candidate compiled: facts for the report and
    the model, never grounds for a verdict (the objects are the candidate's, so they may say anything)."""
    from verifier.compiled import compiled_kernels

    try:
        return compiled_kernels(sys.modules["candidate_kernel"])
    except Exception as e:  # noqa: BLE001 - a report that cannot be made is said so, and the timing stands
        return [{"error": f"{type(e).__name__}: {str(e)[:200]}"}]


# ------------------------------------------------------------------------------------------------------- main
class Watch:
    """What is checked around everything the candidate does: patched functions, threads, audit events."""

    def __init__(self, kernel: str):
        self.measuring = guards.measuring_functions()
        self.threads = guards.live_threads()
        self.audit = guards.AuditTrail(kernel)
        self.audit.install()

    def report(self) -> dict:
        return {"tamper": {"changed_functions": guards.changed_functions(self.measuring),
                           "new_threads": len(guards.live_threads() - self.threads),
                           "audit": self.audit.events[:20]}}


def await_command(job: dict, channel: Channel) -> str:
    """Pause after the checks: the verifier judges them, then says `time` or `stop`."""
    channel.send("checked")
    with os.fdopen(job["command_fd"], "r") as commands:
        return commands.readline().strip()


def die_with_parent() -> None:
    """If the verifier dies (even by SIGKILL), this process goes too, instead of running a hung kernel forever."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(5)


def main(job_path: str) -> int:
    die_with_parent()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    job = json.loads(Path(job_path).read_text())
    channel = Channel(job["channel_fd"])
    channel.phase("setup", limit="compile")
    try:
        spec = load_spec(SpecFiles(**job["spec"]))
        buffers = {n: t.to(job["device"]) for n, t in spec.buffers.items()}
    except Exception as e:  # noqa: BLE001 - the verifier's own failure, not the candidate's
        channel.send("error", data={"code": "internal", "type": type(e).__name__, "message": str(e),
                                    "traceback": traceback.format_exc()})
        os._exit(4)
    watch = Watch(job["kernel"])
    try:
        channel.phase("import", limit="compile")
        fn = import_candidate(job["kernel"])
        run_check(job, channel, fn, buffers)
        channel.record(watch.report())
        if job.get("then_time") and await_command(job, channel) == "time":
            run_time(job, channel, fn, buffers)
            channel.record(watch.report())
    except CandidateFailure as failure:
        channel.send("error", data=failure.report())
        channel.file.flush()
        os._exit(3)  # a CUDA context may be poisoned: do not run its teardown
    channel.send("done")
    channel.file.flush()
    os._exit(0)  # skip interpreter teardown: a candidate's atexit hooks or threads must not run on


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
