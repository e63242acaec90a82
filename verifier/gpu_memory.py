"""Running out of GPU memory, as the verifier reads it: in the candidate's process or in its own. Where other
processes share the GPU (test processes, a training job beside kgen), a correct kernel can meet it, and the
verdict then says so and what held the memory, rather than calling the kernel a crash."""
from __future__ import annotations

import torch

# how running out of GPU memory reads where torch does not raise its own OutOfMemoryError (cuBLAS's handle)
OUT_OF_MEMORY = ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation")
GB = 2 ** 30


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or any(k in str(exc) for k in OUT_OF_MEMORY)


def who_holds_it(device: str) -> str:
    """': F of T GB free, this process holding X GB and other processes Y GB' on a GPU; '' elsewhere. Measured
    once the failed work's tensors are freed."""
    if device != "cuda" or not torch.cuda.is_available():
        return ""
    free, total = torch.cuda.mem_get_info()
    ours = torch.cuda.memory_reserved()
    others = max(0, total - free - ours)
    return (f": {free / GB:.1f} of {total / GB:.1f} GB free, this process holding {ours / GB:.1f} GB and other "
            f"processes {others / GB:.1f} GB")


def ran_out_in_own_work(work: str, device: str, error: str) -> str:
    """What to say when the verifier's own `work` (not the kernel's call) ran out of GPU memory."""
    return (f"the GPU ran out of memory in the verifier's own {work}{who_holds_it(device)}. If other work shares "
            f"this GPU, verify again once it is free. The error: {error}")


def hand_back_cached_memory(trial, device: str) -> None:
    """After a past-limits trial (a sampled one, whose q, k, v and output are 4 GB each), in the candidate's process
    or in the verifier's once it has the reference, the GPU memory torch's allocator cached for it goes back to the
    device: what follows needs a small part of it, and other processes on the GPU need the rest, the next to take
    the GPU's turn above all (verifier.gpu_turns). On an H100 running three verifications, two candidates' processes
    held 22 GB each while the third's past-limits trial ran out of memory."""
    if trial.sample and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
