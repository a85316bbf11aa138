"""The GPU check (issue 17): one command that, on one GPU and inside 8 minutes, runs the GPU tests, times
training, generation and the stage-06 classifier, and writes the figures against NVIDIA's V100 table and our
CPU figures.

    python bench/gpu_check.py                  # on a CUDA machine: writes bench/results/gpu_<GPU name>.md
    python bench/gpu_check.py --cpu-smoke      # every part at tiny sizes on the CPU, in seconds
                                               # (tests/test_gpu_check.py runs it in the normal test run)
    options: --out FOLDER (default bench/results), --budget-s 450, --parts a,b,c,d,f, --compile

Parts (they run in the order b, c, d, f, a: the figures first, then the tests with the time that is left):
  (a) `pytest -m gpu tests/test_gpu.py` (the GPU tests; on the CPU they are all skipped), each outcome
      printed as it comes, so a run stopped by the budget still lists what passed;
  (b) training `auto` at 256 px, batch 16, a few ticks on generated images, for each precision (fp32, NVIDIA's
      fp16 blocks with a grad scaler, bf16 autocast where the GPU has native bfloat16), eager, and also
      compiled with --compile: the first step's and the warm-up tick's seconds, s/kimg over the complete
      ticks after it, peak GPU memory, whether every loss stayed finite, and where ADA's p went;
  (c) 10,000 generated images at 256 px, batch 64: the generator alone, and stage 05's whole path (grey,
      sharpen, save, manifest); and FID/KID of 1,000 fakes with the offline extractor (no download);
  (d) DenseNet-169 at 224 px: training and evaluation images/s with float16 autocast (stage 06's way);
  (f) where the time goes: the profiler's top CUDA kernels of a few training iterations (issue 17 item 5).
Nothing comes from the network: the images are generated, the weights freshly initialised, FID uses the
offline extractor. Each part prints progress. A part that fails is recorded and the other parts still run
(GPU time is scarce: one broken precision should not cost the other figures); the results file is written
either way, and the check then ends with one line `gpu_check: FAILED (part) reason` and exit status 1. A
time budget (default 450 s, so that the whole command stays inside 8 minutes with the start of CUDA) is
shared out between the parts; what would not fit is listed as skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_networks import NVLABS_V100_AUTO_256_HOURS_PER_1000_KIMG, NVLABS_V100_AUTO_256_S_PER_KIMG  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results"
BODY = "XR_SHOULDER"
LOSS_KEYS = ("loss_G", "loss_D", "loss_r1", "pl_penalty", "r1_penalty", "loss_pl")
GOAL_H200_S_PER_KIMG = 6.0  # issue 17 item 5: a quarter of NVIDIA's V100 figure, on an H200
GOAL_GENERATE_IMAGES_PER_S = 2000.0  # issue 17 item 5, 256 px on an H200


@dataclasses.dataclass
class Sizes:
    """What each part runs: the GPU check's sizes, or tiny ones for the CPU smoke run."""
    device: str
    train_cfg: str
    train_resolution: int  # px
    train_batch: int  # images per iteration
    tick_kimg: float  # thousand images per tick
    ticks: int  # ticks per training measurement; the first is warm-up
    train_images: int  # generated training images
    compile_modes: tuple  # (False,) or (False, True)
    generate_images: int
    generate_batch: int
    generate_cfg: str  # 'auto' or 'tiny' (bench_generate.tiny_kwargs)
    generate_resolution: int
    fid_fakes: int
    classifier_arch: str
    classifier_size: int  # px
    classifier_batch: int
    classifier_seconds: float  # timed seconds per measurement
    profile_iterations_kimg: float


# Ticks of 4 steps (batch 16): the first holds the warm-up (on an H200 the first fp32 step took ~55 s of
# cuDNN's algorithm search and kernel loading, 2026-12-04), the next four (16 steps, one regularisation
# period: R1 once, path length four times) are timed. torch.compile only with --compile: its first
# compilation at 256 px took 5 minutes there, a third of a session's GPU time.
GPU_SIZES = Sizes(device="cuda", train_cfg="auto", train_resolution=256, train_batch=16, tick_kimg=0.064, ticks=5,
                  train_images=256, compile_modes=(False,), generate_images=10_000, generate_batch=64,
                  generate_cfg="auto", generate_resolution=256, fid_fakes=1000, classifier_arch="densenet169",
                  classifier_size=224, classifier_batch=32, classifier_seconds=8.0, profile_iterations_kimg=0.096)
# torch.compile is left out of the smoke run: tracing the networks takes minutes on a small CPU
# (tests/test_mixed_precision.py checks the compiled loop with the aot_eager backend, marked slow).
CPU_SMOKE_SIZES = Sizes(device="cpu", train_cfg="tiny", train_resolution=16, train_batch=4, tick_kimg=0.008,
                        ticks=2, train_images=12, compile_modes=(False,), generate_images=16, generate_batch=8,
                        generate_cfg="tiny", generate_resolution=32, fid_fakes=8, classifier_arch="tiny",
                        classifier_size=32, classifier_batch=4, classifier_seconds=0.1,
                        profile_iterations_kimg=0.008)
# Shares of the budget each part may take, in the order they run; what a part leaves over goes to the next.
# The measurements run first and the GPU tests last, with what is left (about 130 s): a pytest run that
# overruns (torch.compile's first compilation is the slow one) then costs no figures, and the tests that
# finished before it was stopped are still listed.
BUDGET_SHARES = {"b": 0.45, "c": 0.1, "d": 0.07, "f": 0.08, "a": 0.3}


class Budget:
    def __init__(self, seconds: float):
        self.started, self.seconds = time.perf_counter(), float(seconds)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)


def say(text: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- the machine ------------------------------------------------------------------------------------------

def machine(sizes: Sizes) -> Dict[str, Any]:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "device": sizes.device}
    if sizes.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, gpu_memory_gb=round(properties.total_memory / 2 ** 30, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.get_device_capability(0)[0] >= 8)
    else:
        info.update(gpu="cpu-smoke", gpu_memory_gb=None, capability=None, cudnn=None, bf16=True)
    return info


def results_name(gpu: str) -> str:
    return "gpu_" + re.sub(r"[^A-Za-z0-9]+", "_", gpu).strip("_") + ".md"


# --- (a) the GPU tests ------------------------------------------------------------------------------------

def part_a(sizes: Sizes, seconds: float) -> Dict[str, Any]:
    """Runs the GPU tests verbosely, printing each outcome as it comes, so that a run stopped at its time limit
    still tells which tests passed, which failed and which one was running."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", "-o", "addopts=",
               "--durations=0", "--durations-min=1", str(REPO_ROOT / "tests" / "test_gpu.py")]
    limit = max(seconds, 10)
    say(f"(a) {' '.join(command[2:])} (at most {limit:.0f} s)")
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stopped = threading.Event()

    def stop():
        stopped.set()
        process.kill()

    timer = threading.Timer(limit, stop)
    timer.start()
    lines: List[str] = []
    outcomes: Dict[str, str] = {}
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            match = re.match(r"^\S*test_gpu\.py::(\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", line)
            if match:
                outcomes[match.group(1)] = match.group(2)
                say(f"(a) {match.group(2)} {match.group(1)}")
        process.wait()
    finally:
        timer.cancel()
    durations = [line.strip() for line in lines if re.match(r"^\s*\d+\.\d+s (call|setup|teardown) ", line)]
    counts = {kind: sum(1 for outcome in outcomes.values() if outcome == kind.upper())
              for kind in ("passed", "failed", "skipped", "error")}
    failures = [f"FAILED {name}" for name, outcome in outcomes.items() if outcome in ("FAILED", "ERROR")]
    result = {"counts": counts, "failures": failures, "returncode": process.returncode, "outcomes": outcomes,
              "durations": durations}
    if stopped.is_set():
        running = lines[-1].split("::", 1)[-1].split()[0] if lines and "::" in lines[-1] and \
            not re.search(r"(PASSED|FAILED|SKIPPED|ERROR)", lines[-1]) else None
        result["summary"] = (f"stopped after {limit:.0f} s: {counts['passed']} passed, {counts['failed']} failed, "
                             f"{counts['skipped']} skipped" + (f"; {running} was running" if running else ""))
        result["error"] = f"(a) pytest -m gpu did not finish within {limit:.0f} s ({result['summary']})"
    else:
        result["summary"] = (lines[-1].strip(" =") if lines else "no output")
        if process.returncode not in (0, 5) or counts["failed"] or counts["error"]:
            result["error"] = f"(a) GPU tests failed: {result['summary']} ({'; '.join(failures[:3])})"
    say(f"(a) {result['summary']}")
    return result


# --- (b) training -----------------------------------------------------------------------------------------

def write_training_images(workspace, resolution: int, count: int) -> None:
    """`count` generated radiograph-like images (a bright bar with a joint on a dark field) as the stage-01
    dataset zip of the positive class: NVlabs' layout, as prepare writes it."""
    from PIL import Image

    path = workspace.dataset_zip(BODY, "positive", resolution)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(count):
            centre, tilt, head = 0.5 + rng.normal() * 0.08, rng.normal() * 0.3, 0.2 + rng.random() * 0.2
            bar = np.exp(-((xx - centre - tilt * (yy - 0.5)) ** 2) / 0.004)
            joint = np.exp(-(((xx - centre) ** 2 + (yy - head) ** 2) / 0.01))
            pixels = 200 * np.maximum(bar, joint) + rng.normal(0, 6, (resolution, resolution)) + 20
            buffer = io.BytesIO()
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert("RGB").save(buffer, format="PNG")
            archive.writestr(f"00000/img{index:08d}.png", buffer.getvalue())
        archive.writestr("dataset.json", json.dumps({"labels": None}))


def precisions(info: Dict[str, Any]) -> List[str]:
    """The amp settings to time: fp32, fp16 (NVIDIA's blocks), and bf16 where the GPU has it natively."""
    return ["off", "fp16"] + (["bf16"] if info["bf16"] else [])


def timed_ticks(lines: List[dict]) -> Dict[str, Any]:
    """Warm-up and steady state from a run's tick lines: the first tick holds the warm-up (cuDNN's algorithm
    search, kernel loading, compilation); s/kimg is the seconds of the complete ticks after it over their
    kimg (a mean, so a tick with R1 in it counts as much as it costs); a tick a time limit cut is left out."""
    seconds = kimg = previous_kimg = 0.0
    complete = timed = 0
    for line in lines:
        tick_kimg, previous_kimg = line["kimg"] - previous_kimg, line["kimg"]
        if line.get("partial"):
            continue
        complete += 1
        if complete > 1:
            timed, seconds, kimg = timed + 1, seconds + line["sec_per_tick"], kimg + tick_kimg
    return {"timed_ticks": timed, "s_per_kimg": seconds / kimg if kimg > 0 else None,
            "warmup_s": lines[0]["sec_per_tick"] if lines else None}


def train_once(workspace, sizes: Sizes, amp: str, compiled: bool, max_seconds: float) -> Dict[str, Any]:
    from mura_aug.gan import loop
    from mura_aug.gan.settings import RunSettings

    run = f"gpucheck-{amp}-{'compiled' if compiled else 'eager'}"
    lines: List[dict] = []
    said: List[str] = []
    settings = RunSettings(label="positive", body_part=BODY, cfg=sizes.train_cfg, resolution=sizes.train_resolution,
                           batch=sizes.train_batch, kimg=sizes.tick_kimg * sizes.ticks,
                           kimg_per_tick=sizes.tick_kimg, snap=10_000, keep=1, device=sizes.device, amp=amp,
                           compile=compiled, run=run, progress=False, max_minutes=max(max_seconds, 5) / 60,
                           cpu_ok=True).check()
    if sizes.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    run_dir = loop.train(workspace, settings, on_tick=lines.append, log=said.append)
    seconds = time.perf_counter() - started
    options = json.loads((Path(run_dir) / "training_options.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # a 256 px state is ~630 MB: keep the disk for the next one
    first_step = next((float(m.group(1)) for m in (re.search(r"first training step done ([0-9.]+) s", text)
                                                    for text in said) if m), None)
    finite = all(math.isfinite(float(line[key])) for line in lines for key in LOSS_KEYS if key in line)
    result = {"amp": amp, "precision": options.get("amp_used"), "compiled": compiled, "ticks": len(lines),
              "kimg": lines[-1]["kimg"] if lines else 0.0, "seconds": seconds, "first_step_s": first_step,
              **timed_ticks(lines),
              "gpu_mem_gb": (torch.cuda.max_memory_allocated() / 2 ** 30) if sizes.device == "cuda" else None,
              "finite": finite, "augment_p": [line.get("augment_p", 0.0) for line in lines],
              "stop_reason": lines[-1].get("stop_reason") if lines else None,
              "loss_G": [line.get("loss_G") for line in lines], "loss_D": [line.get("loss_D") for line in lines]}
    return result


def part_b(sizes: Sizes, info: Dict[str, Any], workspace, seconds: float) -> Dict[str, Any]:
    write_training_images(workspace, sizes.train_resolution, sizes.train_images)
    runs, skipped, errors = [], [], []
    combos = [(amp, compiled) for compiled in sizes.compile_modes for amp in precisions(info)]
    budget = Budget(seconds)
    for index, (amp, compiled) in enumerate(combos):
        share = budget.left() / (len(combos) - index)
        if share < 20 and sizes.device == "cuda":
            skipped.append(f"{amp} {'compiled' if compiled else 'eager'}: no time left in the budget")
            continue
        say(f"(b) training {sizes.train_cfg} {sizes.train_resolution} px batch {sizes.train_batch}, amp {amp}, "
            f"{'torch.compile' if compiled else 'eager'}: {sizes.ticks} ticks of {sizes.tick_kimg} kimg "
            f"(at most {share:.0f} s)")
        try:
            result = train_once(workspace, sizes, amp, compiled, share)
        except Exception as exc:  # noqa: BLE001 -- a failed precision is a result, and the reason is kept
            line = f"(b) training amp {amp}{' compiled' if compiled else ''}: {type(exc).__name__}: " \
                   f"{str(exc).splitlines()[0] if str(exc) else ''}"
            say(line)
            errors.append(line)
            runs.append({"amp": amp, "compiled": compiled, "error": line})
            continue
        say(f"(b) {result['precision']}{' compiled' if compiled else ''}: "
            + (f"{result['s_per_kimg']:.2f} s/kimg over {result['timed_ticks']} ticks after the warm-up"
               if result["s_per_kimg"] is not None else "no complete tick after the warm-up (out of time)")
            + f"; first step done {fmt(result['first_step_s'], 1)} s after the call started, warm-up tick "
            f"{fmt(result['warmup_s'], 1)} s, finite losses {result['finite']}, p {result['augment_p'][-1]:.3f}"
            + (f", peak {result['gpu_mem_gb']:.2f} GB" if result["gpu_mem_gb"] is not None else ""))
        if not result["finite"]:
            errors.append(f"(b) training amp {amp}{' compiled' if compiled else ''}: a loss became NaN or inf")
        runs.append(result)
    out = {"runs": runs, "skipped": skipped}
    if errors:
        out["error"] = errors[0]
    return out


# --- (c) generation and FID -------------------------------------------------------------------------------

def part_c(sizes: Sizes, workspace, seconds: float) -> Dict[str, Any]:
    import bench_generate

    from mura_aug.gan.configs import make_config
    from mura_aug.gan.dataset import load_training_images
    from mura_aug.gan.measure import training_metrics
    from mura_aug.gan.networks import Generator

    G_kwargs = dict(make_config("auto", sizes.generate_resolution).G_kwargs) if sizes.generate_cfg == "auto" \
        else bench_generate.tiny_kwargs(sizes.generate_resolution)
    say(f"(c) generating {sizes.generate_images} images at {sizes.generate_resolution} px, batch "
        f"{sizes.generate_batch}: the generator alone, then with stage 05's saving")
    speed = bench_generate.measure(G_kwargs, sizes.generate_images, sizes.generate_batch, sizes.device)
    say(f"(c) {speed['generate_ips']:.0f} img/s generating, {speed['full_ips']:.0f} img/s with saving")
    result = {"G": f"{sizes.generate_cfg} {sizes.generate_resolution} px", **speed,
              "images": sizes.generate_images, "batch": sizes.generate_batch}
    # FID/KID with the offline extractor: a fresh G against the part-(b) images (any resolution works: the
    # extractor resizes).
    torch.manual_seed(0)
    G = Generator(**G_kwargs).eval().to(sizes.device)
    reals, _ = load_training_images(workspace, BODY, "positive", sizes.train_resolution, progress=False)
    started = time.perf_counter()
    metrics = training_metrics(G, reals, num_fakes=sizes.fid_fakes, device=sizes.device, batch_size=sizes.generate_batch)
    result.update(fid_seconds=time.perf_counter() - started, fid_fakes=sizes.fid_fakes,
                  fid=metrics.get("fid_offline"), kid=metrics.get("kid_offline"))
    say(f"(c) FID (offline extractor) of {sizes.fid_fakes} fakes: {result['fid']:.3g} in {result['fid_seconds']:.1f} s")
    if not all(math.isfinite(float(v)) for v in (result["fid"], result["kid"]) if v is not None):
        result["error"] = "(c) FID/KID is not a finite number"
    return result


# --- (d) the stage-06 classifier --------------------------------------------------------------------------

def part_d(sizes: Sizes, seconds: float) -> Dict[str, Any]:
    import bench_classify

    mixed = sizes.device == "cuda"  # stage 06 uses float16 autocast on CUDA only
    say(f"(d) {sizes.classifier_arch} at {sizes.classifier_size} px, batch {sizes.classifier_batch}, "
        f"{'float16 autocast' if mixed else 'float32'}: training, then evaluation")
    if sizes.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train = bench_classify.images_per_second(sizes.classifier_arch, sizes.classifier_size, sizes.classifier_batch,
                                             True, sizes.classifier_seconds, device=sizes.device, mixed=mixed)
    evaluate = bench_classify.images_per_second(sizes.classifier_arch, sizes.classifier_size,
                                                sizes.classifier_batch, False, sizes.classifier_seconds,
                                                device=sizes.device, mixed=mixed)
    memory = torch.cuda.max_memory_allocated() / 2 ** 30 if sizes.device == "cuda" else None
    say(f"(d) {train:.0f} img/s training, {evaluate:.0f} img/s evaluation")
    epoch_images = bench_classify.MURA_SHOULDER_TRAIN_IMAGES
    return {"arch": sizes.classifier_arch, "size": sizes.classifier_size, "batch": sizes.classifier_batch,
            "mixed": mixed, "train_ips": train, "eval_ips": evaluate, "gpu_mem_gb": memory,
            "epoch_minutes": epoch_images / train / 60}


# --- (f) where the time goes ------------------------------------------------------------------------------

def part_f(sizes: Sizes, info: Dict[str, Any], workspace, seconds: float) -> Dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from mura_aug.gan import loop
    from mura_aug.gan.settings import RunSettings

    amp = "auto"
    say(f"(f) profiling {sizes.profile_iterations_kimg} kimg of training ({sizes.train_cfg} "
        f"{sizes.train_resolution} px, amp {amp})")
    settings = RunSettings(label="positive", body_part=BODY, cfg=sizes.train_cfg, resolution=sizes.train_resolution,
                           batch=sizes.train_batch, kimg=sizes.profile_iterations_kimg,
                           kimg_per_tick=sizes.profile_iterations_kimg, snap=10_000, keep=1, device=sizes.device,
                           amp=amp, run="gpucheck-profile", progress=False, max_minutes=max(seconds, 5) / 60,
                           cpu_ok=True).check()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if sizes.device == "cuda" else [])
    with profile(activities=activities) as prof:
        run_dir = loop.train(workspace, settings, log=lambda text: None)
    shutil.rmtree(run_dir, ignore_errors=True)
    from torch.autograd.profiler_util import FunctionEventAvg

    device_key = "self_device_time_total" if hasattr(FunctionEventAvg, "self_device_time_total") \
        else "self_cuda_time_total"  # torch < 2.4
    sort_by = device_key if sizes.device == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=15, max_name_column_width=60)
    say("(f) top kernels recorded")
    return {"sort_by": sort_by, "table": table}


# --- (e) the results file ---------------------------------------------------------------------------------

def cpu_figures() -> List[str]:
    """Our CPU figures to compare with, quoted from bench/results/*.md (the line and its file)."""
    wanted = [("train_cpu.md", r"^auto-32 \(batch 4"), ("train_cpu.md", r"^\| tiny-32 \| 8 \| 2 \|"),
              ("generate.md", r"^\| auto config 32 px"), ("classify.md", r"^\| densenet169 \| 224 \|")]
    quoted = []
    for name, pattern in wanted:
        path = RESULTS / name
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        match = next((line for line in lines if re.search(pattern, line)), None)
        quoted.append(f"- `bench/results/{name}`: {match.strip() if match else '(no such line)'}")
    return quoted


def fmt(value, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


def write_results(path: Path, argv: List[str], sizes: Sizes, info: Dict[str, Any], parts: Dict[str, Any],
                  seconds: float, failure: Optional[str], failures: List[str]) -> None:
    low, high = NVLABS_V100_AUTO_256_S_PER_KIMG
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# GPU check: {info['gpu']}", "",
             f"- Date: {now}; command: `python bench/gpu_check.py {' '.join(argv)}`; {seconds:.0f} s in all.",
             f"- GPU: {info['gpu']} ({fmt(info['gpu_memory_gb'], 1, ' GiB')}, compute capability "
             f"{info['capability']}), torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, "
             f"Python {info['python']}, CPU {info['cpu']}.",
             f"- Result: {'FAILED: ' + failure if failure else 'every part that ran passed'}.",
             *[f"  - {line}" for line in failures], ""]
    if sizes.device != "cuda":
        lines += ["CPU smoke run: tiny sizes on the CPU, to check that every part of the script works; the figures "
                  "say nothing about speed.", ""]
    a = parts.get("a")
    lines += ["## (a) GPU tests (`pytest -m gpu tests/test_gpu.py`)", "",
              f"{a['summary']}" if a else "not run", ""]
    if a and a.get("outcomes"):
        lines += [f"- {outcome} {name}" for name, outcome in a["outcomes"].items()] + [""]
    if a and a.get("durations"):
        lines += ["Slowest (pytest --durations, >= 1 s):", "", "```", *a["durations"], "```", ""]
    b = parts.get("b")
    lines += [f"## (b) Training `{sizes.train_cfg}` at {sizes.train_resolution} px, batch {sizes.train_batch}", "",
              f"{sizes.ticks} ticks of {sizes.tick_kimg} kimg on {sizes.train_images} generated images. The first "
              "tick holds the warm-up (cuDNN's algorithm search, kernel loading, compilation); s/kimg is the "
              "seconds of the complete ticks after it over their kimg, '-' where the time limit left none. "
              f"NVIDIA's table for its own code (custom CUDA kernels) on one V100: {low}-{high} s/kimg "
              f"({NVLABS_V100_AUTO_256_HOURS_PER_1000_KIMG:.1f} h per 1000 kimg); goal on an H200 (issue 17): "
              f"<= {GOAL_H200_S_PER_KIMG:g} s/kimg.", "",
              "| precision | torch.compile | s/kimg | ticks timed | s to the first step | warm-up tick s "
              f"| x NVIDIA V100 ({low}) | hours / 1000 kimg | peak GPU GB | losses finite | ADA p (first -> last tick) "
              "| note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in (b or {}).get("runs", []):
        if "error" in run:
            lines.append(f"| {run['amp']} | {'yes' if run['compiled'] else 'no'} | - | - | - | - | - | - | - | - | "
                         f"- | {run['error']} |")
            continue
        ratio = run["s_per_kimg"] / low if run["s_per_kimg"] else None
        p = run["augment_p"]
        lines.append(f"| {run['precision']} (amp {run['amp']}) | {'yes' if run['compiled'] else 'no'} | "
                     f"{fmt(run['s_per_kimg'])} | {run['timed_ticks']} | {fmt(run['first_step_s'], 1)} | "
                     f"{fmt(run['warmup_s'], 1)} | {fmt(ratio)} | "
                     f"{fmt(run['s_per_kimg'] / 3.6 if run['s_per_kimg'] else None, 1)} | {fmt(run['gpu_mem_gb'])} | "
                     f"{'yes' if run['finite'] else 'NO'} | {p[0]:.3f} -> {p[-1]:.3f} | "
                     f"{run['stop_reason'] or ''} |")
    for note in (b or {}).get("skipped", []):
        lines.append(f"| {note} |  |  |  |  |  |  |  |  |  |  |  |")
    c = parts.get("c")
    lines += ["", f"## (c) Generation ({c['G'] if c else '-'}), batch {sizes.generate_batch}", ""]
    if c:
        lines += ["| images | generator alone img/s | with stage 05's saving img/s | share of the time in G | "
                  "KiB per PNG | goal (H200) |", "|---|---|---|---|---|---|",
                  f"| {c['images']} | {c['generate_ips']:.0f} | {c['full_ips']:.0f} | {c['generator_share']:.0%} | "
                  f"{c['kb_per_image']:.1f} | >= {GOAL_GENERATE_IMAGES_PER_S:.0f} img/s |", "",
                  f"FID / KID (offline extractor, fresh G, {c['fid_fakes']} fakes against the part-(b) images): "
                  f"{fmt(c['fid'], 3)} / {fmt(c['kid'], 4)} in {c['fid_seconds']:.1f} s.", ""]
    else:
        lines += ["not run", ""]
    d = parts.get("d")
    lines += ["## (d) Stage 06 classifier", ""]
    if d:
        lines += ["| arch | px | batch | precision | train img/s | eval img/s | peak GPU GB | minutes per epoch of "
                  "MURA shoulder train |", "|---|---|---|---|---|---|---|---|",
                  f"| {d['arch']} | {d['size']} | {d['batch']} | {'fp16 autocast' if d['mixed'] else 'fp32'} | "
                  f"{d['train_ips']:.0f} | {d['eval_ips']:.0f} | {fmt(d['gpu_mem_gb'])} | {d['epoch_minutes']:.1f} |",
                  ""]
    else:
        lines += ["not run", ""]
    lines += ["## Our CPU figures (2-core shared CPU, for scale)", "", *cpu_figures(), ""]
    f = parts.get("f")
    if f:
        lines += [f"## (f) Where the time goes (profiler, sorted by {f['sort_by']})", "", "```", f["table"], "```",
                  ""]
    skipped = [name for name in "abcdf" if name not in parts]
    if skipped:
        lines += [f"Parts without figures: {', '.join(skipped)} (not asked for, out of time, or failed).", ""]
    lines += ["## Reading (to be written by hand after the run)", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- the command ------------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="every part at tiny sizes on the CPU (seconds)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results file")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="seconds for the parts together (450: the command stays inside 8 minutes)")
    parser.add_argument("--compile", action="store_true",
                        help="(b) also with torch.compile (its first compilation at 256 px takes minutes)")
    parser.add_argument("--parts", default="a,b,c,d,f", help="which parts to run, e.g. b,c (they run in the "
                        "order b, c, d, f, a)")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    sizes = CPU_SMOKE_SIZES if args.cpu_smoke else GPU_SIZES
    if args.compile:
        sizes = dataclasses.replace(sizes, compile_modes=(False, True))
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: FAILED (setup): PyTorch sees no CUDA GPU here; run it on a GPU machine, or pass "
              "--cpu-smoke to check the script on the CPU", flush=True)
        return 1
    wanted = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(wanted) - set(BUDGET_SHARES))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(BUDGET_SHARES)}")
    budget = Budget(args.budget_s)
    info = machine(sizes)
    say(f"{info['gpu']}, torch {info['torch']}, CUDA {info['cuda']}; parts {', '.join(wanted)}; budget "
        f"{args.budget_s:.0f} s")
    parts: Dict[str, Any] = {}
    failures: List[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        from mura_aug.workspace import Workspace

        workspace = Workspace(Path(folder) / "workspace")
        spent_share = 0.0
        for name in [part for part in BUDGET_SHARES if part in wanted]:
            share_left = sum(BUDGET_SHARES[p] for p in BUDGET_SHARES if p in wanted) - spent_share
            seconds = budget.left() * BUDGET_SHARES[name] / max(share_left, 1e-9)
            spent_share += BUDGET_SHARES[name]
            if budget.left() < 5 and sizes.device == "cuda":
                say(f"({name}) skipped: the budget is spent")
                continue
            try:
                if name in ("c", "f") and not workspace.dataset_zip(BODY, "positive", sizes.train_resolution).exists():
                    write_training_images(workspace, sizes.train_resolution, sizes.train_images)
                if name == "a":
                    parts[name] = part_a(sizes, seconds)
                elif name == "b":
                    parts[name] = part_b(sizes, info, workspace, seconds)
                elif name == "c":
                    parts[name] = part_c(sizes, workspace, seconds)
                elif name == "d":
                    parts[name] = part_d(sizes, seconds)
                elif name == "f":
                    parts[name] = part_f(sizes, info, workspace, seconds)
                if parts[name].get("error"):
                    failures.append(parts[name]["error"])
            except Exception as exc:  # noqa: BLE001 -- recorded; the check ends with one clear line
                traceback.print_exc()
                failures.append(f"({name}) {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            if failures and failures[-1].startswith(f"({name})"):
                say(f"({name}) FAILED: {failures[-1]}")
    failure = failures[0] + (f" (and {len(failures) - 1} more, see the results file)" if len(failures) > 1
                             else "") if failures else None
    path = args.out / results_name(info["gpu"])
    write_results(path, argv, sizes, info, parts, args.budget_s - budget.left(), failure, failures)
    say(f"wrote {path}")
    if failure is not None:
        print(f"gpu_check: FAILED {failure}", flush=True)
        return 1
    print(f"gpu_check: OK ({args.budget_s - budget.left():.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
