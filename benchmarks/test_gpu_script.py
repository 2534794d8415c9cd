"""`benchmarks/gpu.py --quick` end to end on the CPU: every part runs and the JSON holds its
figures. Minutes on a busy 2-core machine, hence a benchmark and not a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from measure import builtins

SCRIPT = Path(__file__).with_name("gpu.py")


@pytest.mark.benchmark(group="gpu-script")
def test_gpu_script_quick_on_the_cpu(benchmark, glue_dir, tmp_path):
    out = tmp_path / "quick.json"
    done = benchmark.pedantic(subprocess.run, args=([
        sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out),
        "--data-dir", str(glue_dir)],), kwargs={"capture_output": True, "text": True},
        rounds=1, iterations=1)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert not report["errors"]
    assert report["device"]["device_name"].startswith("cpu (")
    assert report["harness"]["examples_per_s"] > 0
    assert set(report["step_costs"]["ratios"]) == set(builtins())
    assert report["step_costs"]["ratios"]["vanilla"] == 1.0
    assert [(w["workers"], w["runs"], w["failed"]) for w in report["workers"]] == [(1, 4, 0),
                                                                                   (2, 4, 0)]
    efficiency = report["efficiency"]["8x32"]
    assert set(efficiency) == ({"fp32", "bf16"} if report["device"]["bf16"] else {"fp32"})
    assert all(0 < e["fraction"] and e["model_flops"] > 0 for e in efficiency.values())
    final = report["breakdown"]["runs"]["final"]
    assert final["steps"] == 4 and 0 < final["parts"]["steps"] < final["total"]
    assert final["parts"]["test"] > 0
    assert report["breakdown"]["runs"]["tuning"]["parts"]["test"] == 0  # tuning leaves it alone
    projection = report["projection"]
    assert len(projection["cells"]) == 2 and projection["hours"] > 0
    assert f"glue-small on {report['device']['device_name']}: about" in done.stdout
