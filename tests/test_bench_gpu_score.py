"""bench/gpu_score.py must keep running where no GPU is: its CPU smoke run, and the format it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_score.py"


def run_bench(*extra: str) -> tuple[str, dict]:
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--pairs", "256", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    return out.stdout, result


def check(stdout: str, result: dict, model: str) -> None:
    (run,) = result["runs"]
    line = next(x for x in stdout.splitlines() if x.startswith(f"{model} "))
    assert "bare forward" in line and "full stage" in line and line.count("pairs/s") == 2 and "ratio" in line
    assert run["bare_pairs_per_s"] > 0 and run["full_pairs_per_s"] > 0
    assert run["ratio"] == pytest.approx(run["full_pairs_per_s"] / run["bare_pairs_per_s"])
    assert f"ratio {run['ratio']:.3f}" in line
    decode = result["decode"]
    assert decode["cpu_decode_images_per_s"] > 0 and decode["device_decode_images_per_s"] > 0
    assert decode["max_score_diff"] < 1e-3  # torchvision's decode feeds the model what PIL's does
    assert "images/s" in stdout and result["pairs"] == 256 and result["device"] == "cpu"


def test_gpu_bench_runs_on_cpu_and_prints_pairs_per_second_and_ratio():
    stdout, result = run_bench(
        "--model", "tiny-vit", "--image-size", "64", "--repeats", "1", "--decode-images", "64"
    )
    check(stdout, result, "tiny-vit")


@pytest.mark.slow
def test_gpu_bench_default_model_on_cpu():
    """The script as the GPU run uses it (ViT-B-32), on CPU: minutes on a small machine."""
    stdout, result = run_bench("--repeats", "1", "--decode-images", "32")
    check(stdout, result, "ViT-B-32")
