"""Profile one call on the GPU: which kernels ran, on which stream, which copies and aten ops.

A marker kernel is launched on the caller's stream just before and just after the call, so the caller's
stream id in the trace is known without relying on how PyTorch numbers streams.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable

import torch

LIBRARY_MATH = ("gemm", "gemv", "cublas", "cutlass", "xmma", "softmax", "flash", "fmha", "attention", "cudnn",
                "sm90_", "sm80_", "splitk", "matmul")


def profile_call(call: Callable[[], object], jit_functions: list[str]) -> dict:
    marker = torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        marker.add_(1)
        call()
        marker.add_(1)
        torch.cuda.synchronize()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    return summarize(trace.get("traceEvents", []), jit_functions)


def summarize(events: list[dict], jit_functions: list[str]) -> dict:
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e.get("ts", 0))
    copies = [e for e in events if e.get("cat") in ("gpu_memcpy", "gpu_memset")]
    ops = sorted({e["name"] for e in events if e.get("cat") == "cpu_op" and e.get("name", "").startswith("aten::")})
    if len(kernels) < 2:
        return {"error": "the profiler saw no kernels (not even the verifier's markers)", "kernels": [],
                "ops": ops}
    caller_stream = kernels[0].get("args", {}).get("stream")
    inner = kernels[1:-1]
    listed = [{"name": k.get("name", ""), "stream": k.get("args", {}).get("stream"), "us": k.get("dur", 0.0),
               "own": _is_own(k.get("name", ""), jit_functions)} for k in inner]
    return {
        "caller_stream": caller_stream,
        "kernels": listed,
        "other_streams": sorted({k["stream"] for k in listed if k["stream"] != caller_stream}, key=str),
        "library_math": [k["name"] for k in listed if not k["own"] and _looks_like_math(k["name"])],
        "device_to_host_bytes": sum(_bytes(c) for c in copies if "DtoH" in c.get("name", "")),
        "host_to_device_bytes": sum(_bytes(c) for c in copies if "HtoD" in c.get("name", "")),
        "ops": ops,
    }


def _is_own(name: str, jit_functions: list[str]) -> bool:
    return any(name == f or name.startswith(f + "_") or name.startswith(f + "(") for f in jit_functions)


def _looks_like_math(name: str) -> bool:
    lowered = name.lower()
    return lowered.startswith("triton_") or any(k in lowered for k in LIBRARY_MATH)


def _bytes(event: dict) -> int:
    args = event.get("args", {})
    return int(args.get("bytes", args.get("Bytes", 0)) or 0)
