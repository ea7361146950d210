"""The lab 4 benchmark end to end, on a small made-up CIFAR-like set with tiny budgets (about 30 s).

It checks what the real benchmark reports: one line per seed, the median and the spread, and that
every budgeted run (the recipe and fastai's) ends inside its budget and learns.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def colour_classes(path: Path, n: int = 640, seed: int = 0) -> Path:
    """An .npz in the layout of CIFAR-10's (x uint8 [N, 32, 32, 3], y [N], classes): each class has its own colour."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    colours = rng.integers(40, 216, size=(10, 3))  # [10, 3]
    x = colours[y][:, None, None, :] + rng.normal(0, 25, size=(n, 32, 32, 3))  # [N, 32, 32, 3]
    classes = np.array(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y.astype(np.int64), classes=classes)
    return path


def test_benchmark_reports_every_seed_a_median_and_keeps_its_budgets(tmp_path):
    data = colour_classes(tmp_path / "colours.npz")
    budget = 4.0
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cifar10.py"), "--data", str(data),
                          "--n-valid", "160", "--budget", str(budget), "--net-budget", "2", "--seeds", "2",
                          "--rounds", "1", "--widths", "8,16,32", "--batch", "32"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    recipe = [row for row in rows if row["run"] == "recipe"]
    assert [row["seed"] for row in recipe] == [0, 1]
    summary = rows[-1]
    assert summary["run"] == "summary" and summary["recipe_runs"] == 2
    accuracies = sorted(row["valid_accuracy"] for row in recipe)
    assert summary["recipe_accuracy"] == {"median": round(sum(accuracies) / 2, 4), "min": accuracies[0],
                                          "max": accuracies[1]}
    for name in ("recipe", "fastai"):
        assert summary[f"{name}_within_budget"] and summary[f"{name}_s"]["max"] <= budget + 0.5
        assert summary[f"{name}_accuracy"]["min"] > 0.5  # colours are easy: chance is 0.1
    assert all(row["planned_epochs"] >= 1 for row in rows if row["run"] in ("recipe", "fastai"))
    assert summary["net_accuracy"] > 0.5 and "fit_vs_bare" in summary
