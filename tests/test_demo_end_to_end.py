"""The README's first command, end to end: `python -m mura_aug demo` runs notebooks 01 -> 06 on demo data.

The integration test of the whole product: it runs in CI with every `pytest` (about 5-8 minutes on two CPU
cores). To skip it while working on something else: `python -m pytest --deselect tests/test_demo_end_to_end.py`.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from mura_aug.notebooks import series

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_whole_series_and_prints_the_comparison(tmp_path):
    missing = [name for name in series.SERIES if name not in series.find_notebooks()]
    assert not missing, f"notebooks missing from notebooks/: {', '.join(missing)}"
    workspace = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MPLBACKEND": "Agg"}
    completed = subprocess.run([sys.executable, "-m", "mura_aug", "demo", "--workspace", str(workspace),
                                "--no-progress"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                               timeout=1800)
    out = completed.stdout
    assert completed.returncode == 0, out[-4000:] + completed.stderr[-4000:]
    params = yaml.safe_load(series.DEMO_PARAMS_FILE.read_text())

    # 01: the generated MURA tree, the tables and one GAN dataset per class
    assert (workspace / "demo").is_dir()
    tables = workspace / "data" / "tables"
    for name in ("train", "valid", "train_positive", "train_negative"):
        assert (tables / f"XR_SHOULDER_{name}.csv").is_file()
    resolution = params["01"]["RESOLUTION"]
    for cls in ("positive", "negative"):
        assert (workspace / "data" / "datasets" / f"XR_SHOULDER_{cls}_{resolution}.zip").is_file()

    # 02, 03: one run per class with network files and training statistics; 04 continued the newest one
    runs = {path.name: path for path in (workspace / "data" / "experiments").iterdir() if path.is_dir()}
    for cls in ("positive", "negative"):
        run = runs[f"XR_SHOULDER-{cls}-{params['02']['CFG']}-{resolution}"]
        assert list(run.glob("network-*kimg.pt")) and (run / "stats.jsonl").is_file()
        assert (run / "training_options.json").is_file()
    histories = [json.loads((run / "training_options.json").read_text()).get("history", []) for run in runs.values()]
    assert any(session.get("resumed") for history in histories for session in history)  # notebook 04

    # 05: N synthetic images per class and the augmented table listing them
    per_class = params["05"]["N_PER_CLASS"]
    for cls in ("positive", "negative"):
        assert len(list((workspace / "data" / "Augmented_Fakes" / cls / "SHOULDER").glob("*.png"))) == per_class
    with open(workspace / "data" / "Augmented_Fakes" / "manifest.csv", newline="") as handle:
        dropped = sum(row["dropped"] == "True" for row in csv.DictReader(handle))  # e.g. copies of real images
    with open(tables / "XR_SHOULDER_train_augmented.csv", newline="") as handle:
        sources = [row["source"] for row in csv.DictReader(handle)]
    assert sources.count("synthetic") == 2 * per_class - dropped > 0 and "real" in sources

    # 06: a summary with a baseline-vs-augmented comparison, shown at the end of the output
    evaluation = workspace / "results" / "evaluation" / "XR_SHOULDER"
    summaries = sorted(evaluation.glob("summary.json")) + sorted(evaluation.glob("*/summary.json"))
    assert summaries
    comparison = json.loads(summaries[0].read_text())["comparison"]
    assert {entry["metric"] for entry in comparison} >= {"kappa", "auc"}
    assert "Baseline vs augmented (stage 06):" in out
    assert out.index("Baseline vs augmented") > out.index("06_densenet_eval")

    # every notebook executed, saved, and reported ok with its time
    executed = workspace / "results" / "notebooks"
    for name in series.SERIES:
        assert (executed / f"{name}.ipynb").is_file()
        status_line = next(line for line in out.splitlines() if line.startswith(name) and str(executed) in line)
        assert status_line.split()[1] == "ok"
