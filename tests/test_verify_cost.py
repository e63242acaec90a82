"""benchmarks/verify_cost.py on the CPU: a built-in kernel judged under the interpreter, its stages' seconds and
its worst error over verifications with fresh inputs, in a table and in JSON (on a GPU it also runs the trial past
the index limits, which the CPU never has)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_verify_cost_prints_each_cases_stages(tmp_path):
    out = tmp_path / "cost.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "verify_cost.py"), "--device", "cpu",
                           "--specs", "noop,causal", "--shape", "1x2x32x16", "--past-limits", "off", "--repeat", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert [(r["spec"], r["verdict"], r["past_limits"]) for r in rows] == [("noop", "accepted", False),
                                                                          ("causal", "accepted", False)]
    for r in rows:
        assert 0 < r["child"] <= r["seconds"] and 0 < r["numerics"] < r["seconds"]
        assert r["largest"] == "B1 H2 N32 D16" and r["trials"] > 10
        line = next(line for line in done.stdout.splitlines() if line.startswith(f"| {r['spec']} |"))
        assert f"| {r['config']} | no | accepted | {r['seconds']:.2f} |" in line
        # the cold verification and two warm ones, each with inputs of its own seed
        assert len(set(r["seeds"])) == 3
        assert 0 < r["error_budget_used"] < 1
        assert line.endswith(f"| 3 | {r['error_budget_used']:.1%} |")
