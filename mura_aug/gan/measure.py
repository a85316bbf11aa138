"""Measuring a generator: the fakes of a snapshot against the real training images of its class.

`training_metrics` is what training measures every `--metrics-every` snapshots (`snapshot_metrics` makes the
training loop's `on_snapshot` callback of it, for the CLI and notebooks 02-04); `python -m mura_aug metrics`
measures any snapshot and writes `results/metrics/<run>/<snapshot>.json`, a nearest-real CSV and a
closest-pairs figure per class. The
measures themselves are `mura_aug.metrics`; the fakes come from `mura_aug.gan.sampling` (image i = seed+i).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np

from mura_aug.devices import resolve_device
from mura_aug.errors import UserError
from mura_aug.gan import sampling
from mura_aug.gan.dataset import load_real_images
from mura_aug.gan.settings import RunSettings
from mura_aug.metrics import (COLLAPSE_FRACTION, DEFAULT_EXTRACTOR, EXTRACTOR_NAMES, MEMORISATION_RATIO,
                              PR_NEIGHBOURS, MemorisationReport, OfflineExtractor, compute_metrics, get_extractor,
                              metric_label, pixel_descriptors)
from mura_aug.metrics.features import Extractor, _as_uint8_nchw
from mura_aug.workspace import (CLASSES, RunFolder, atomic_path, atomic_write_csv, atomic_write_json, parse_run_name,
                                resolve_workspace)

PathLike = Union[str, os.PathLike]

DEFAULT_NUM_FAKES = 2000            # images generated for `python -m mura_aug metrics`
# Images generated per measurement during training (kept small: it is a trend); the training setting owns it.
DEFAULT_TRAINING_NUM_FAKES = RunSettings.default_of("metrics_fakes")
DEFAULT_MAX_REALS = 10000           # real images used at most (a random subset beyond that)


def generate_fakes(G, num_images: int, seed: int = 0, device="cpu", batch_size: int = 32,
                   truncation_psi: float = 1.0, classes=None, progress: bool = False) -> np.ndarray:
    """`num_images` uint8 NCHW images from G, image i from seed `seed + i` (`sampling.generate`).

    classes: for a conditional G, one class for all images or one per image ('positive'/'negative' or
    1/0); None draws them uniformly (from a generator seeded with `seed`)."""
    if int(getattr(G, "c_dim", 0)) > 0 and classes is None:
        classes = np.random.RandomState(seed).randint(0, int(G.c_dim), size=num_images)
    return sampling.generate_array(G, range(seed, seed + num_images), classes, truncation_psi=truncation_psi,
                                   batch_size=batch_size, device=device, progress=progress,
                                   desc="generating fakes")


# The training loop passes the same real array every time: keep its features instead of recomputing them.
_REAL_FEATURE_CACHE: Dict[str, object] = {}


def clear_training_metrics_cache() -> None:
    """Forget the cached real features (and the reference to the real images that keeps them valid): call
    when training ends, so a notebook does not hold the training images in memory."""
    _REAL_FEATURE_CACHE.clear()


def training_metrics(G, real_images_uint8, num_fakes: int = DEFAULT_TRAINING_NUM_FAKES, device="cpu",
                     extractor: Optional[Extractor] = None, seed: int = 0, max_reals: int = DEFAULT_MAX_REALS,
                     real_labels=None, batch_size: int = 32) -> Dict[str, float]:
    """The hook of the training loop: a flat dict of floats to merge into the tick's stats.jsonl line.

    Keys: fid_<extractor>, kid_<extractor>, kid_<extractor>_std, precision_<extractor>, recall_<extractor>,
    diversity_fakes, diversity_reals, diversity_ratio, collapse_alarm (1.0 = alarm), pixel_diversity_ratio,
    num_fakes, num_reals, metrics_seconds. Memorisation is left to `python -m mura_aug metrics` (it needs
    all reals, not a subset). real_labels (int, 0/1 per real image) sets the class mix of a conditional G's
    fakes; without it classes are drawn uniformly.
    """
    import time

    started = time.perf_counter()
    extractor = extractor or OfflineExtractor(device=device)
    reals = _as_uint8_nchw(real_images_uint8)
    if len(reals) > max_reals:
        reals = reals[np.sort(np.random.default_rng(seed).choice(len(reals), max_reals, replace=False))]
    # Keyed on the memory the images live in (np.asarray of a memmap is a new object on every call, but the
    # same memory); the cache holds a reference, so that memory cannot be freed and reused meanwhile.
    source = np.asarray(real_images_uint8)
    key = (source.__array_interface__["data"][0], source.shape, source.strides, str(source.dtype),
           type(extractor).__name__, extractor.name, getattr(extractor, "seed", None), max_reals, seed)
    if _REAL_FEATURE_CACHE.get("key") == key:
        real_features, real_pixels = _REAL_FEATURE_CACHE["features"], _REAL_FEATURE_CACHE["pixels"]
    else:
        real_features, real_pixels = extractor(reals), pixel_descriptors(reals)
        _REAL_FEATURE_CACHE.update(key=key, array=source, features=real_features, pixels=real_pixels)
    classes = None
    if real_labels is not None and int(getattr(G, "c_dim", 0)) > 0:
        labels = np.asarray(real_labels).astype(np.int64).reshape(-1)
        classes = labels[np.random.RandomState(seed).randint(0, len(labels), size=num_fakes)]
    fakes = generate_fakes(G, num_fakes, seed=seed, device=device, batch_size=batch_size, classes=classes)
    metrics, _ = compute_metrics(reals, fakes, extractor=extractor, seed=seed, real_features=real_features,
                                 real_pixels=real_pixels, with_memorisation=False)
    metrics["metrics_seconds"] = time.perf_counter() - started
    return {key: float(value) for key, value in metrics.items()}


def snapshot_metrics(settings: RunSettings, log: Callable[[str], None] = print, workspace=None):
    """The training loop's `on_snapshot(G_ema, images, labels, device) -> dict` for these settings: the
    `training_metrics` of G_ema with `settings.metrics_fakes` fakes (a conditional G makes them in the mix of
    the real labels), features from `settings.metrics_extractor` (standard: NVIDIA's FID network, cached in
    the workspace's weights/ folder, else the offline network with a warning), plus `fid_label`, how the FID
    is to be named; None when `settings.metrics_every` is 0. A measurement that cannot run (a UserError,
    e.g. too few images) is skipped with a line in the log instead of stopping the training."""
    if settings.metrics_every <= 0:
        return None
    extractors: Dict[str, Extractor] = {}  # built at the first measurement, then kept (one download, one load)

    def on_snapshot(G_ema, images, labels, device) -> Dict[str, object]:
        try:
            if "net" not in extractors:
                extractors["net"] = get_extractor(settings.metrics_extractor, workspace=workspace, device=device)
            extractor = extractors["net"]
            metrics: Dict[str, object] = dict(training_metrics(
                G_ema, images, num_fakes=settings.metrics_fakes, device=device, extractor=extractor,
                real_labels=labels if G_ema.c_dim > 0 else None))
        except UserError as exc:
            log(f"metrics skipped: {exc.problem}")
            return {}
        metrics["fid_label"] = metric_label(f"fid_{extractor.name}",
                                            getattr(extractor, "comparable_with_published", True))
        return metrics

    return on_snapshot


# =====================================================================================================
# `python -m mura_aug metrics`
# =====================================================================================================

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None,
                        help="workspace folder (default: Drive in Colab, else ./workspace)")
    parser.add_argument("--run", required=True, help="run folder name under data/experiments, e.g. "
                        "XR_SHOULDER-positive-paper256-256")
    parser.add_argument("--snapshot", default=None, help="network-*.pt / state-*.pt / .pkl file (absolute, or a "
                        "name inside the run folder); default: the run's newest network file")
    parser.add_argument("--num-fakes", type=int, default=DEFAULT_NUM_FAKES, help="images to generate (count)")
    parser.add_argument("--max-reals", type=int, default=DEFAULT_MAX_REALS,
                        help="real images used at most (count; a random subset beyond)")
    parser.add_argument("--extractor", choices=EXTRACTOR_NAMES, default=DEFAULT_EXTRACTOR,
                        help="feature network: standard (NVIDIA's FID network, downloaded once into the "
                        "workspace's weights/ folder; without it the offline one, with a warning), inception "
                        "(NVIDIA's, else torchvision's Inception-v3) or offline (no download; offline FID, not "
                        "comparable with published FIDs)")
    parser.add_argument("--inception-file", default=None,
                        help="NVIDIA's TorchScript inception-2015-12-05.pt, for FIDs comparable with papers")
    parser.add_argument("--class", dest="classes", choices=CLASSES, action="append", default=None,
                        help="class to measure (repeatable); default: the run's label, both for a 'both' run")
    parser.add_argument("--seed", type=int, default=0, help="first seed of the fakes (image i uses seed+i)")
    parser.add_argument("--truncation-psi", type=float, default=1.0, help="truncation (1 = none, as FID is defined)")
    parser.add_argument("--memorisation-threshold", type=float, default=None,
                        help="RMS grey-level difference 0..1 under which a fake counts as a copy (default: "
                        f"{MEMORISATION_RATIO} x the median nearest-neighbour gap among reals)")
    parser.add_argument("--collapse-fraction", type=float, default=COLLAPSE_FRACTION,
                        help="mode-collapse alarm when fake diversity < this fraction of real diversity")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=32, help="images per generator / extractor batch")
    parser.add_argument("--force", action="store_true", help="measure again even when the result file exists")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def find_snapshot(run_dir: Path, snapshot: Optional[PathLike]) -> Path:
    """The snapshot file to measure: the given one (absolute or inside the run folder), or the newest."""
    if snapshot:
        candidate = Path(snapshot).expanduser()
        for path in (candidate, run_dir / candidate):
            if path.is_file():
                return path
        raise UserError(f"No snapshot file {snapshot} (looked in the current folder and in {run_dir}).",
                        "Pass an existing network-*.pt / state-*.pt file (python -m mura_aug runs lists them), "
                        "or leave --snapshot out for the newest.")
    candidates = RunFolder(run_dir).network_files()
    if not candidates:
        raise UserError(f"The run folder {run_dir} holds no network-*kimg.pt snapshot yet.",
                        "Train the run until its first snapshot (see --snap), or pass --snapshot FILE.")
    return candidates[-1]


def measure_snapshot(workspace, run: str, snapshot: Optional[PathLike] = None, num_fakes: int = DEFAULT_NUM_FAKES,
                     extractor: str = DEFAULT_EXTRACTOR, inception_file: Optional[PathLike] = None,
                     classes: Optional[Sequence[str]] = None, max_reals: int = DEFAULT_MAX_REALS, seed: int = 0,
                     truncation_psi: float = 1.0, memorisation_threshold: Optional[float] = None,
                     collapse_fraction: float = COLLAPSE_FRACTION, device="auto", batch_size: int = 32,
                     force: bool = False, progress: bool = True) -> Dict[str, object]:
    """Measure one snapshot of a run and write results/metrics/<run>/<snapshot>.json (+ nearest-real CSV and a
    closest-pairs figure per class). An existing result with the same settings is returned, not recomputed."""
    import json

    workspace = resolve_workspace(workspace)
    run_dir = workspace.run(run).path
    if not run_dir.is_dir():
        raise UserError(f"No run folder {run_dir}.",
                        "Pass a run name from data/experiments (python -m mura_aug runs lists them).")
    minimum = 2 * (PR_NEIGHBOURS + 1)  # precision/recall need k+1 points per set; KID subsets 2
    for option, value in (("--num-fakes", num_fakes), ("--max-reals", max_reals)):
        if value < minimum:
            raise UserError(f"{option} {value} is too few.", f"Use at least {minimum} (thousands for a "
                            "meaningful FID).")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1.", "Use e.g. --batch-size 32.")
    if not 0 < collapse_fraction <= 1:
        raise UserError(f"--collapse-fraction {collapse_fraction} is outside (0, 1].",
                        f"Use a fraction such as the default {COLLAPSE_FRACTION}.")
    snapshot_path = find_snapshot(run_dir, snapshot)
    out_path = workspace.metrics_result(run, snapshot_path)
    run_info = parse_run_name(run)
    if not classes:  # the run's class; both classes for a class-conditional ('both') run
        classes = list(CLASSES) if run_info["label"] not in CLASSES else [run_info["label"]]
    for cls in classes:
        if cls not in CLASSES:
            raise UserError(f"Unknown class {cls!r}.", f"Pass --class with one of {', '.join(CLASSES)}.")
    settings = {"extractor": extractor, "num_fakes": num_fakes, "max_reals": max_reals, "seed": seed,
                "truncation_psi": truncation_psi, "inception_file": str(inception_file) if inception_file else None,
                "memorisation_threshold": memorisation_threshold, "collapse_fraction": collapse_fraction}
    device = resolve_device(device)
    # Chosen before looking for an earlier result: 'standard' measured offline last time and with NVIDIA's
    # network now (downloaded since) is a different measurement.
    feature_net = get_extractor(extractor, workspace=workspace, device=device, inception_file=inception_file,
                                progress=progress)
    if out_path.is_file() and not force:
        try:
            previous = json.loads(out_path.read_text())
        except (OSError, ValueError):
            previous = {}
        if previous.get("settings") == settings and previous.get("extractor_name") == feature_net.name and \
                set(classes) <= set(previous.get("metrics", {})):
            previous.update(reused=True, path=str(out_path))
            return previous

    from mura_aug.gan.network_file import load_generator

    G = load_generator(snapshot_path, device=device)
    meta = getattr(G, "snapshot_meta", {}) or {}
    resolution = int(getattr(G, "img_resolution", run_info["resolution"]))
    comparable = bool(getattr(feature_net, "comparable_with_published", False))
    result = {"run": run, "snapshot": snapshot_path.name, "kimg": meta.get("kimg"), "resolution": resolution,
              "settings": settings, "extractor_name": feature_net.name,
              "extractor_source": getattr(feature_net, "source", "offline random conv net"),
              "comparable_with_published_fid": comparable,
              "fid_label": metric_label(f"fid_{feature_net.name}", comparable), "metrics": {}}
    for cls in classes:
        reals, real_names = load_real_images(workspace, str(run_info["body_part"]), cls, resolution,
                                             max_images=max_reals, seed=seed, progress=progress)
        fakes = generate_fakes(G, num_fakes, seed=seed, device=device, batch_size=batch_size,
                               truncation_psi=truncation_psi, classes=cls, progress=progress)
        metrics, report = compute_metrics(reals, fakes, extractor=feature_net, seed=seed,
                                          collapse_fraction=collapse_fraction,
                                          memorisation_threshold=memorisation_threshold)
        result["metrics"][cls] = metrics
        _write_memorisation_outputs(out_path, cls, report, fakes, reals, real_names, seed)
    atomic_write_json(out_path, result)
    result["path"] = str(out_path)
    return result


def _write_memorisation_outputs(out_path: Path, cls: str, report: MemorisationReport, fakes, reals,
                                real_names: Sequence[str], seed: int):
    """<snapshot>_<class>_nearest.csv (each fake's seed, nearest real, distance, flag; closest first) and
    <snapshot>_<class>_closest_pairs.png next to the JSON result."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from mura_aug.gan.plots import plot_closest_pairs

    table = pd.DataFrame({"seed": np.arange(seed, seed + len(report.distance)),
                          "nearest_real": [real_names[i] for i in report.nearest_real],
                          "distance": report.distance, "flagged": report.flagged})
    atomic_write_csv(out_path.with_name(f"{out_path.stem}_{cls}_nearest.csv"),
                     table.sort_values("distance", kind="stable"))
    figure = plot_closest_pairs(report, fakes, reals, fake_labels=[f"seed {s}" for s in table["seed"]],
                                real_labels=[Path(name).name for name in real_names])
    with atomic_path(out_path.with_name(f"{out_path.stem}_{cls}_closest_pairs.png")) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def result_extractor(result: Dict[str, object]) -> str:
    """The features a measure_snapshot result was computed with ('offline', 'inception'), also for results
    written before the extractor choice was resolved (their settings named it)."""
    return str(result.get("extractor_name") or result["settings"]["extractor"])


def format_summary(result: Dict[str, object]) -> str:
    """A few human-readable lines for one measure_snapshot result; every number named by `metric_label`."""
    settings = result["settings"]
    name = result_extractor(result)
    comparable = bool(result.get("comparable_with_published_fid", name != "offline"))

    def label(key: str) -> str:
        return metric_label(key, comparable)

    lines = [f"Metrics of run {result['run']}, snapshot {result['snapshot']} (kimg {result.get('kimg')}), "
             f"extractor {settings['extractor']} ({name} features)"
             + (" (reused the existing result)" if result.get("reused") else "")]
    for cls, m in result["metrics"].items():
        lines.append(f"  {cls}: {int(m['num_fakes'])} fakes vs {int(m['num_reals'])} reals | {label(f'fid_{name}')} "
                     f"{m[f'fid_{name}']:.2f} | {label(f'kid_{name}')} {m[f'kid_{name}']:.4f} ± "
                     f"{m[f'kid_{name}_std']:.4f} | {label(f'precision_{name}')} {m[f'precision_{name}']:.3f}, "
                     f"{label(f'recall_{name}')} {m[f'recall_{name}']:.3f}")
        alarm = "  MODE-COLLAPSE ALARM" if m["collapse_alarm"] else ""
        lines.append(f"      diversity fakes/reals {m['diversity_ratio']:.3f} (pixels {m['pixel_diversity_ratio']:.3f})"
                     f"{alarm} | memorised {int(m['memorised_count'])} of {int(m['num_fakes'])} (nearest real "
                     f"min {m['nearest_real_min']:.4f}, threshold {m['memorisation_threshold']:.4f})")
    if name == "inception" and not comparable:
        lines.append("  Note: torchvision's Inception-v3 is not the TF FID network; close to, not equal to, "
                     "published FIDs (pass --inception-file for those).")
    if "path" in result:
        lines.append(f"  Written: {result['path']}")
    return "\n".join(lines)


def fid_line(result: Dict[str, object]) -> str:
    """One line per class: the fakes' FID of a measure_snapshot result, named as what it is."""
    name = result_extractor(result)
    comparable = bool(result.get("comparable_with_published_fid", name != "offline"))
    return "\n".join(
        f"{result['run']} at {float(result.get('kimg') or 0):g} kimg, {cls}: {metric_label(f'fid_{name}', comparable)} "
        f"= {m[f'fid_{name}']:.2f} ({int(m['num_fakes'])} fakes vs {int(m['num_reals'])} real training images)"
        for cls, m in result["metrics"].items())


def latest_fid_text(workspace) -> Optional[str]:
    """The `fid_line` of each run's newest measured snapshot in results/metrics (None when none was)."""
    import json

    workspace = resolve_workspace(workspace)
    lines = []
    for run_folder in workspace.runs():
        results = []
        for path in sorted(workspace.metrics_dir(run_folder.name).glob("*.json")):
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(result, dict) and result.get("metrics") and result.get("kimg") is not None:
                results.append(result)
        if results:
            lines.append(fid_line(max(results, key=lambda r: float(r["kimg"]))))
    return "\n".join(lines) or None


def run(args: argparse.Namespace) -> int:
    result = measure_snapshot(args.workspace, args.run, snapshot=args.snapshot, num_fakes=args.num_fakes,
                              extractor=args.extractor, inception_file=args.inception_file, classes=args.classes,
                              max_reals=args.max_reals, seed=args.seed, truncation_psi=args.truncation_psi,
                              memorisation_threshold=args.memorisation_threshold,
                              collapse_fraction=args.collapse_fraction, device=args.device,
                              batch_size=args.batch_size, force=args.force, progress=args.progress)
    print(format_summary(result))
    return 0
