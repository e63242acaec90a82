"""The benchmark's report of saved results (the GPU part of the benchmark runs only on the device)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def row(spec: str, kgen_ms: float, flex_ms: float, sdpa_ms: float | None = None) -> dict:
    return {"spec": spec, "shape": "B2 H16 N8192 D128", "density": 1.0, "kgen_ms": kgen_ms, "kgen_config": "BM64",
            "flex_ms": {"default": flex_ms * 1.1, "max-autotune": flex_ms}, "sdpa_ms": sdpa_ms}


def test_report_merges_files_into_one_table_with_ratios(tmp_path):
    for name, rows in (("a.json", [row("noop", 2.0, 2.4, sdpa_ms=1.6)]), ("b.json", [row("softcap", 4.0, 3.0)])):
        (tmp_path / name).write_text(json.dumps({"gpu": "Test GPU", "torch": "2.x", "rows": rows}))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--report",
                           str(tmp_path / "a.json"), str(tmp_path / "b.json")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    noop = next(line for line in lines if line.startswith("| noop"))
    # 4*B*H*N*N*D = 1.1 TFLOP in 2.0 ms; flex max-autotune 2.4 ms; SDPA 1.6 ms
    assert noop.split(" | ")[2] == "550" and "1.20x" in noop and noop.endswith("0.80x |")
    assert "0.75x" in next(line for line in lines if line.startswith("| softcap"))
    assert "geometric mean kgen/flex max-autotune: 0.95x over 2 rows; min 0.75x, max 1.20x; 1 rows at 1.00x" \
           in done.stdout
    assert "Test GPU" in lines[0] and "2 rows from 2 file(s)" in lines[0]
