"""Anti-cheat judgement: turn what the candidate's process observed into one stage result.

The observations come from the child (guards.py: output type, aliasing, input mutation, guard regions,
poison, aten ops, audit events, patched functions, threads) and, on a GPU, from the profiled call
(profile.py: kernels, streams, copies). Priority order: the most specific explanation first.
"""
from __future__ import annotations

from verifier.verdict import StageResult

PRIORITY = ("tampering", "snooping", "forbidden_call", "side_stream", "bad_output", "output_aliases_input",
            "input_mutated", "out_of_bounds_write", "uninitialized_output", "materialized_scores",
            "multiple_kernels")
DTOH_ALLOWED_BYTES = 1024  # a scalar or two read back (e.g. .item() on a length) is tolerated


def integrity(records: list[dict], leftover_processes: bool, scores_bytes: dict[str, float]) -> StageResult:
    """Stage result from the check run's per-trial observations and its final tamper record. `scores_bytes`: for
    each trial, an allocation that large can only be (a big share of) the scores."""
    findings: list[tuple[str, str]] = []
    for record in records:
        for obs in record.get("observations", []):
            findings.append((obs["code"], f"{record.get('trial', '')}: {obs['message']}"))
        if record.get("largest_allocation", 0) >= scores_bytes.get(record.get("trial"), 0) > 0:
            findings.append(("materialized_scores", f"{record['trial']}: one allocation of "
                             f"{record['largest_allocation'] / 2**20:.1f} MiB, on the order of the Sq x Skv scores; "
                             f"keep scores in registers, block by block"))
        tamper = record.get("tamper")
        if tamper:
            findings += _tamper_findings(tamper)
    if leftover_processes:
        findings.append(("tampering", "processes started by the candidate were still running after it exited"))
    return _first(findings, "integrity", "no cheating observed: fresh outputs, inputs intact, guards intact, "
                                          "no library math, nothing patched")


def _tamper_findings(tamper: dict) -> list[tuple[str, str]]:
    found = []
    if tamper.get("changed_functions"):
        found.append(("tampering", "patched what measures it: " + ", ".join(tamper["changed_functions"])))
    if tamper.get("new_threads"):
        found.append(("tampering", f"{tamper['new_threads']} thread(s) started by the candidate outlived the call"))
    for code, event, detail in tamper.get("audit", []):
        found.append((code, f"the kernel file's own code raised audit event `{event}` {detail}"))
    return found


def gpu_integrity(first: dict, steady: dict, extra_bytes: int, scores_bytes: float, out_bytes: int,
                  require_single_kernel: bool, reused_outputs: int = 0) -> StageResult:
    """Judge the profiled calls of the timing run."""
    findings: list[tuple[str, str]] = []
    if reused_outputs:
        findings.append(("output_aliases_input", f"{reused_outputs} timed call(s) returned the memory of an earlier "
                                                 f"output the caller still held: return a fresh output every call"))
    for label, prof in (("first call", first), ("steady call", steady)):
        if prof.get("error"):
            findings.append(("tampering", f"{label}: {prof['error']}"))
            continue
        if prof["other_streams"]:
            findings.append(("side_stream", f"{label}: kernels ran on stream(s) {prof['other_streams']} instead of "
                                            f"the caller's current stream {prof['caller_stream']}; launch on "
                                            f"torch.cuda.current_stream()"))
        if prof["library_math"]:
            findings.append(("forbidden_call", f"{label}: library kernels did the math: "
                                               + ", ".join(sorted(set(prof["library_math"]))[:5])))
        if prof["device_to_host_bytes"] > DTOH_ALLOWED_BYTES:
            findings.append(("forbidden_call", f"{label}: {prof['device_to_host_bytes']} bytes copied to the host "
                                               f"during the call"))
        if prof["host_to_device_bytes"] >= max(out_bytes // 4, 1 << 16):
            findings.append(("forbidden_call", f"{label}: {prof['host_to_device_bytes']} bytes copied from the "
                                               f"host during the call (work done on the CPU?)"))
    if extra_bytes >= scores_bytes > 0:
        findings.append(("materialized_scores", f"the call allocated {extra_bytes / 2**20:.1f} MiB beyond its "
                                                f"output, on the order of the Sq x Skv scores"))
    if require_single_kernel and len(steady.get("kernels", [])) > 1:
        names = ", ".join(k["name"][:60] for k in steady["kernels"])
        findings.append(("multiple_kernels", f"{len(steady['kernels'])} launches per call ({names}); "
                                             f"--require-single-kernel asks for exactly one"))
    return _first(findings, "gpu integrity", "kernels on the caller's stream, no library math, no host copies")


def _first(findings: list[tuple[str, str]], stage: str, ok_message: str) -> StageResult:
    if not findings:
        return StageResult.passed(stage, ok_message)
    findings.sort(key=lambda f: PRIORITY.index(f[0]) if f[0] in PRIORITY else len(PRIORITY))
    code = findings[0][0]
    same = [m for c, m in findings if c == code]
    message = "; ".join(dict.fromkeys(same[:3]))
    others = sorted({c for c, _ in findings if c != code})
    if others:
        message += f" (also: {', '.join(others)})"
    return StageResult.failed(stage, code, message, findings=[{"code": c, "message": m} for c, m in findings])
