"""Instruments that run inside the candidate's process and watch one call.

- Poison: memory the verifier hands out (fresh allocations, guard regions) is filled with 0xFF bytes, a
  NaN with its sign bit set in every float dtype. Arithmetic never produces that bit pattern, so an
  output element that still holds it was never written, and an input read past its end turns into NaN.
- CallWatch: a torch dispatch mode around the call that logs every aten op and places every tensor the
  call allocates inside a poisoned guard region, checked afterwards for out-of-bounds writes.
- Tamper watch: identities of the functions that measure the candidate, live threads, and an audit hook
  that notes when the candidate's own code opens files, starts processes or walks the heap.
"""
from __future__ import annotations

import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

POISON_BYTE = 0xFF
# Around inputs: 0xFFFE halfwords, also a NaN in every float dtype but with another payload, so that
# NaN read past an input's end (and carried through CPU arithmetic) is not mistaken for unwritten output.
INPUT_GUARD = -2  # int16 0xFFFE
GUARD_BYTES = 1 << 16

# Allocations and pure data movement: what a host wrapper around a Triton kernel legitimately does.
ALLOC_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like",
             "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like", "new_full", "scalar_tensor",
             "arange", "tensor", "lift_fresh_copy"}
EMPTY_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
STRUCTURAL_OPS = ALLOC_OPS | {
    "view", "_unsafe_view", "reshape", "_reshape_alias", "as_strided", "expand", "permute", "transpose", "t",
    "unsqueeze", "squeeze", "select", "slice", "split", "split_with_sizes", "chunk", "unbind", "narrow", "alias",
    "detach", "contiguous", "clone", "copy_", "_to_copy", "to", "set_", "fill_", "zero_", "lift_fresh",
    "resize_", "_local_scalar_dense", "is_nonzero", "cat", "stack", "flatten", "unflatten", "view_as",
    "expand_as", "record_stream", "_has_compatible_shallow_copy_type", "is_same_size", "equal"}
# Never allowed, at any size: these are the problem's own math done by a library.
FORBIDDEN_OPS = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "matmul", "linear", "einsum", "tensordot", "dot", "mv",
                 "_softmax", "softmax", "log_softmax", "_log_softmax", "_safe_softmax", "_scaled_mm",
                 "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math",
                 "scaled_dot_product_attention", "_flash_attention_forward", "_efficient_attention_forward",
                 "_fused_sdp_choice", "flex_attention", "convolution", "_convolution"}
SMALL_COMPUTE_ELEMS = 4096  # torch arithmetic on index-sized tensors (block maps) is tolerated


def poison_(t: torch.Tensor) -> torch.Tensor:
    t.view(torch.uint8).fill_(POISON_BYTE) if t.is_contiguous() else t.fill_(float("nan"))
    return t


UNWRITTEN_CHUNK = 1 << 26  # elements checked at once: counted whole, a 4 GB output's flags widened to 16 GB of int64


def unwritten_count(out: torch.Tensor) -> int:
    """Elements whose every byte is still the poison byte, counted a chunk at a time (the past-limits trial's
    output is 4 GB; counted whole it ran an H100 out of memory beside another verification)."""
    as_bytes = out.detach().contiguous().view(torch.uint8).view(out.numel(), out.element_size())
    return sum(int((chunk == POISON_BYTE).all(dim=1).sum()) for chunk in as_bytes.split(UNWRITTEN_CHUNK))


@dataclass
class GuardedBuffer:
    """A tensor placed inside poisoned guard regions."""

    storage: torch.Tensor  # flat uint8
    start: int
    nbytes: int
    label: str
    pattern: torch.Tensor  # the guard's bytes, as the first bytes of a fresh buffer held them

    def intact(self) -> bool:
        before = self.storage[: self.start]
        after = self.storage[self.start + self.nbytes:]
        return torch.equal(before, self.pattern[: len(before)]) and torch.equal(after, self.pattern[: len(after)])


@dataclass
class GapGuard:
    """The memory between the elements of a strided view into a larger buffer: it must keep what it held."""

    memory: torch.Tensor
    gaps: torch.Tensor  # bool, like memory: True where no element of the view lies
    held: torch.Tensor  # the gaps' bytes before the call
    label: str

    @classmethod
    def around(cls, memory: torch.Tensor, view_of, label: str) -> "GapGuard":
        """`view_of(memory)` is the view; the rest of `memory` is watched."""
        gaps = torch.ones(memory.shape, dtype=torch.bool, device=memory.device)
        view_of(gaps).fill_(False)
        return cls(memory, gaps, memory[gaps].view(torch.uint8).clone(), label)

    def intact(self) -> bool:
        return torch.equal(self.memory[self.gaps].view(torch.uint8), self.held)


def guarded(t: torch.Tensor, label: str, copy: bool = True, halfword: int = -1) -> tuple[torch.Tensor, GuardedBuffer]:
    """A contiguous copy of `t` (or poisoned memory of its shape) with guard regions on both sides.

    The guards (and, without `copy`, the tensor itself) are filled with `halfword` repeated."""
    nbytes = t.numel() * t.element_size()
    padded = GUARD_BYTES * 2 + nbytes + (nbytes % 2)
    storage = torch.empty(padded // 2, dtype=torch.int16, device=t.device).fill_(halfword).view(torch.uint8)
    view = storage[GUARD_BYTES: GUARD_BYTES + nbytes].view(t.dtype).view(t.shape)
    if copy:
        view.copy_(t)
    pattern = storage[:GUARD_BYTES].clone()
    return view, GuardedBuffer(storage[: GUARD_BYTES * 2 + nbytes], GUARD_BYTES, nbytes, label, pattern)


@dataclass
class CallLog:
    allocations: list[GuardedBuffer] = field(default_factory=list)
    allocated_bytes: list[int] = field(default_factory=list)
    compute_ops: dict[str, int] = field(default_factory=dict)  # op name -> largest tensor it touched


class CallWatch(TorchDispatchMode):
    """Logs the aten ops of one call and guards what it allocates."""

    def __init__(self):
        super().__init__()
        self.log = CallLog()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in ALLOC_OPS and isinstance(out, torch.Tensor) and out.numel() > 0 and out.is_contiguous():
            label = f"the memory around a {tuple(out.shape)} tensor the call allocated with {name}"
            view, buf = guarded(out, label, copy=name not in EMPTY_OPS)
            self.log.allocations.append(buf)
            self.log.allocated_bytes.append(buf.nbytes)
            return view
        if name not in STRUCTURAL_OPS:
            size = max([_numel(a) for a in _flat(args, kwargs)] + [_numel(out)])
            self.log.compute_ops[name] = max(size, self.log.compute_ops.get(name, 0))
        return out


def _flat(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


def _numel(x) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


def forbidden_ops(log: CallLog) -> list[str]:
    """Library math in the call: forbidden ops at any size, other arithmetic on problem-sized tensors."""
    found = [op for op in log.compute_ops if op in FORBIDDEN_OPS]
    found += [f"{op} on {n} elements" for op, n in log.compute_ops.items()
              if op not in FORBIDDEN_OPS and n > SMALL_COMPUTE_ELEMS]
    return found


# ---------------------------------------------------------------------------------------------- tamper watch
def measuring_functions() -> dict[str, object]:
    """What the verifier measures with; the candidate must leave every one of these as it found it."""
    import verifier.guards as guards
    import verifier.timing as timing

    found = {"time.perf_counter": time.perf_counter, "time.monotonic": time.monotonic,
             "torch.cuda.Event": torch.cuda.Event, "torch.cuda.synchronize": torch.cuda.synchronize,
             "torch.cuda.current_stream": torch.cuda.current_stream, "torch.cuda.stream": torch.cuda.stream,
             "torch.cuda.Event.record": torch.cuda.Event.record,
             "torch.cuda.Event.elapsed_time": torch.cuda.Event.elapsed_time,
             "torch.Tensor.copy_": torch.Tensor.copy_, "torch.save": torch.save, "torch.equal": torch.equal,
             "torch.profiler.profile": torch.profiler.profile}
    for module in (guards, timing):
        for name, value in vars(module).items():
            if callable(value) and getattr(value, "__module__", None) == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    found["verifier.timing._SPIN_CYCLES"] = timing._SPIN_CYCLES  # torch's, taken at import: the wall clock's control
    return found


def changed_functions(before: dict[str, object]) -> list[str]:
    now = measuring_functions()
    return [name for name, fn in before.items() if now.get(name) is not fn]


def live_threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.is_alive()}


class Refused(PermissionError):
    """Raised into the candidate when its own code does something the verifier forbids."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class AuditTrail:
    """Audit events raised by the candidate's own code (not by torch or triton on its behalf)."""

    SNOOPING = {"open", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._getframe",
                "sys._current_frames", "os.listdir", "os.scandir", "glob.glob", "shutil.copyfile"}
    TAMPERING = {"os.system", "subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.kill",
                 "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.addressof", "socket.connect", "socket.bind",
                 "_thread.start_new_thread", "sys.settrace", "sys.setprofile", "sys.addaudithook",
                 "object.__setattr__", "object.__delattr__", "builtins.input", "os.putenv", "os.unsetenv"}

    def __init__(self, candidate_file: str):
        self.candidate_file = candidate_file
        self.events: list[tuple[str, str, str]] = []  # (code, event, detail)
        self._busy = threading.local()
        self._stdlib = (sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["stdlib"],)

    def install(self) -> None:
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args) -> None:
        if event not in self.SNOOPING and event not in self.TAMPERING:
            return
        if getattr(self._busy, "on", False):
            return
        self._busy.on = True
        blocked = None
        try:
            if event.startswith("object.") and self._owned(args[0]):
                return  # the candidate's own classes are its to change (a @dataclass sets their __doc__)
            if self._raised_by_candidate():
                code = "snooping" if event in self.SNOOPING else "tampering"
                self.events.append((code, event, repr(args)[:200]))
                blocked = code
        finally:
            self._busy.on = False
        if blocked:  # recorded, and refused: the candidate must not reach the verifier or the system
            raise Refused(blocked, f"kgen's verifier does not allow `{event}` from a kernel file ({args!r:.120})")

    def _owned(self, obj) -> bool:
        cls = obj if isinstance(obj, type) else type(obj)
        module = sys.modules.get(getattr(cls, "__module__", None) or "")
        return getattr(module, "__file__", None) == self.candidate_file

    def _raised_by_candidate(self) -> bool:
        """The innermost frame outside the standard library belongs to the candidate's file."""
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if name == self.candidate_file:
                return True
            library = "-packages" in name or not name.startswith(self._stdlib + ("<",))
            if library or name.startswith("<frozen importlib"):
                return False  # the import system, or a library acting on the candidate's behalf
            frame = frame.f_back
        return False
