"""How hard the demo data is: the demo baseline's study kappa on its valid split per difficulty setting.

For each (subtlety, positive share) it generates the demo's MURA tree (DEMO_PATIENTS of demo_params.yaml,
seed 0), runs stage 01 on it and trains stage 06's baseline arm with the demo's settings (demo_params.yaml,
section "06") for seeds 0, 1, 2; it records each seed's study-level kappa at threshold 0.5 on the valid
split, the number the demo's comparison starts from. The default difficulty should put all three inside
0.5-0.85: stage 06 can then find augmentation helping or hurting.

    python bench/bench_difficulty.py                          # the sweep, writes bench/results/difficulty.md
    python bench/bench_difficulty.py --subtlety 0.6 --share 0.5 --out /tmp/one.md   # one setting

About 20-30 s per setting on two CPU cores.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its shared helpers
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from mura_aug.evaluate import stage as evaluate_stage  # noqa: E402
from mura_aug.evaluate.settings import EvalSettings  # noqa: E402
from mura_aug.notebooks.series import DEMO_PARAMS_FILE  # noqa: E402
from mura_aug.prepare import demo_data  # noqa: E402
from mura_aug.prepare import stage as prepare_stage  # noqa: E402
from mura_aug.prepare.settings import PrepareSettings  # noqa: E402
from mura_aug.workspace import Workspace  # noqa: E402

SUBTLETIES = (0.1, 0.2, 0.25, 0.3)
SHARES = (0.5,)
SEEDS = (0, 1, 2)
TARGET = (0.5, 0.85)  # study kappa range the default must give (issue 18)
RESULTS = Path(__file__).resolve().parent / "results" / "difficulty.md"


def baseline_kappas(subtlety: float, share: float, folder: Path) -> dict:
    """Study kappas (threshold 0.5) of the demo baseline on valid, one per seed, and the run's facts."""
    params = yaml.safe_load(DEMO_PARAMS_FILE.read_text())
    started = time.perf_counter()
    workspace = Workspace(folder / "workspace")
    prepare = PrepareSettings(mura_path=None, resolution=16, workers=2,
                              demo_patients=params["01"]["DEMO_PATIENTS"], demo_subtlety=subtlety,
                              demo_positive_share=share)
    prepare_stage.run_stage(workspace, prepare, progress=False)
    evaluation = EvalSettings.from_parameters({**params["common"], **params["06"]}, arms=("baseline",),
                                              seeds=list(SEEDS))
    summary = evaluate_stage.run_stage(workspace, evaluation, progress=False)
    kappas = [run["metrics"]["study@0.5"]["kappa"] for run in summary["runs"]]
    aucs = [run["metrics"]["study@0.5"]["auc"] for run in summary["runs"]]
    valid = prepare_stage.load_table(workspace, "XR_SHOULDER", "valid")
    studies = valid.drop_duplicates("study_id")
    return {"subtlety": subtlety, "share": share, "kappas": kappas, "aucs": aucs,
            "studies": len(studies), "positive_studies": int(studies["label"].sum()),
            "seconds": time.perf_counter() - started}


def row(result: dict) -> str:
    kappas = result["kappas"]
    inside = all(TARGET[0] <= k <= TARGET[1] for k in kappas)
    return (f"| {result['subtlety']:.2f} | {result['share']:.2f} | {' / '.join(f'{k:.2f}' for k in kappas)} | "
            f"{np.mean(kappas):.2f} | {np.mean(result['aucs']):.2f} | {result['positive_studies']}/{result['studies']} "
            f"| {'yes' if inside else 'no'} | {result['seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subtlety", type=float, nargs="*", default=SUBTLETIES)
    parser.add_argument("--share", type=float, nargs="*", default=SHARES)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for share in args.share:
            for subtlety in args.subtlety:
                result = baseline_kappas(subtlety, share, Path(tmp) / f"s{subtlety}-p{share}")
                lines.append(row(result))
                print(lines[-1], flush=True)
    params = yaml.safe_load(DEMO_PARAMS_FILE.read_text())
    header = [
        "# Demo data difficulty: the demo baseline's study kappa on its valid split",
        "",
        f"Machine: {platform.machine()} CPU, 2 threads (shared with other work; times are rough), Python "
        f"{platform.python_version()}, torch {torch.__version__}. Date: "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Command: `python bench/bench_difficulty.py` (bench/bench_difficulty.py). Data: the demo tree "
        f"(`make_demo_mura`, {params['01']['DEMO_PATIENTS']} patients, seed 0) at each subtlety / positive share; "
        f"stage 06 baseline arm with demo_params.yaml's section 06 (ARCH {params['06']['ARCH']}, IMAGE_SIZE "
        f"{params['06']['IMAGE_SIZE']}, EPOCHS {params['06']['EPOCHS']}), seeds {', '.join(map(str, SEEDS))}; "
        "kappa and AUC at study level, threshold 0.5, on the valid split.",
        f"Defaults in `mura_aug/prepare/demo_data.py`: DEFAULT_SUBTLETY = {demo_data.DEFAULT_SUBTLETY}, "
        f"DEFAULT_POSITIVE_SHARE = {demo_data.DEFAULT_POSITIVE_SHARE}.",
        "",
        "| subtlety | positive share | study kappa per seed | mean kappa | mean AUC | positive / valid studies "
        f"| all seeds in {TARGET[0]}-{TARGET[1]} | s |",
        "|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    write_keeping_readings(args.out, "\n".join(header + lines))  # the readings written by hand under "## " stay
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
