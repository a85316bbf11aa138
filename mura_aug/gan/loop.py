"""The StyleGAN2-ADA training loop (stages 02-04): phases, EMA, ADA, ticks, stats, snapshots, exact resume.

    train(workspace, settings, on_tick=None, on_snapshot=None, log=print) -> run folder   # every stage 02-04
    settings_to_resume(workspace, run=None, kimg=..., ...) -> settings                   # notebook 04

One iteration (NVlabs' schedule) runs the phases G main, G reg (every G_reg_interval iterations), D main,
D reg (every D_reg_interval); a phase's batch is split into chunks of `batch_gpu` whose gradients accumulate.
Then G_ema follows G, the image count grows by the batch size, and every ADA interval the augmentation
probability p moves toward the target overfitting heuristic r_t. A *tick* is `kimg_per_tick` thousand images:
at its end one stats line is printed and appended to `stats.jsonl`; every `snap` ticks (and at the end) a
snapshot is written (snapshot.py), and every `metrics_every`-th snapshot `on_snapshot` measures G_ema (the
CLI and notebooks pass gan.measure's; this module does not know how metrics are computed).

Random draws are keyed (rng.py), the data order comes from one sampler that every process runs in full, and
the per-phase running statistics (G's w_avg, the path-length mean) are averaged over the chunks instead of
updated chunk after chunk. So training depends on `batch` and `batch_gpu`, not on how the chunks are spread
over processes (distributed.py), and nothing between two iterations (the fakes grid, metrics) can change it.

Exact resume: a state holds everything the next iteration depends on (weights, optimizer moments, ADA p and
its accumulator, image count, iteration and tick counters, path-length mean, grad scaler, the data sampler's
state, and the global RNG states), so on CPU a run cut into pieces reproduces the uninterrupted run bit for
bit. Which settings a resumed run keeps is RunSettings.for_resume (settings.py). With several ranks the state
is the same on every rank (rank 0 writes it, every rank reads it): a run resumed on the same number of ranks
continues bit for bit (CPU), on another number (same `batch_gpu`) the same training up to the order in which
the ranks' gradients are summed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from mura_aug.devices import (accelerator_memory_text, cuda_training_backends, free_accelerator_memory,
                              grad_scaler, is_out_of_memory, out_of_memory_line, precision, resolve_device,
                              reuse_freed_cpu_memory)
from mura_aug.errors import UserError, os_errors_as_user_errors
from mura_aug.gan import estimates, rng, snapshot, staging, transfer
from mura_aug.gan.configs import TrainConfig, make_config
from mura_aug.gan.dataset import (CLASS_NAMES, DataSampler, batch_tensors, choose_source, classes_of,
                                  load_training_images)
from mura_aug.gan.distributed import Distributed, per_rank_batch, this_rank
from mura_aug.gan.settings import RENAMED, RunSettings
from mura_aug.workspace import RunFolder, Workspace, atomic_write_json, free_bytes, kimg_tag, resolve_workspace, \
    run_name

# Keys of a stats line that depend on the machine or the wall clock (left out when comparing runs).
TIMING_KEYS = ("sec_per_tick", "sec_per_kimg", "total_sec", "eta_sec", "timestamp", "cpu_mem_gb", "gpu_mem_gb",
               "stop_reason", "metrics_seconds")
Log = Callable[[str], None]
OnSnapshot = Callable[[Any, Any, Any, torch.device], Dict[str, Any]]  # (G_ema, images, labels, device) -> keys


# =====================================================================================================
# The entry points
# =====================================================================================================

def train(workspace, settings: RunSettings, on_tick: Optional[Callable[[Dict[str, Any]], None]] = None,
          on_snapshot: Optional[OnSnapshot] = None, log: Log = print) -> Path:
    """Train (or continue) a StyleGAN2-ADA run on one class (or both) and return its run folder.

    settings: what to train (RunSettings; `settings.resume` says whether and what to continue);
    on_tick(stats line): called after every tick; on_snapshot(G_ema, real images uint8, their labels,
    device) -> dict: called at every `metrics_every`-th snapshot, its keys join that tick's stats line (it
    runs with the RNG states forked, so it cannot change the training); log: where progress lines go.
    Inside an initialised torch.distributed process group (torchrun) every rank calls this with the same
    settings; they train together and only rank 0 writes files and logs. A file-system error (a read-only
    or full disk, a dropped mount) ends in a UserError naming the path and the fix, as in every stage.
    What the call is about to do (on a CPU how long it would take, what a kill could cost) is `preflight`'s
    to say: the notebooks and the CLI print it before they call this, so it is said once."""
    with os_errors_as_user_errors("training"):
        return _train(workspace, settings, on_tick, on_snapshot, log)


def _train(workspace, settings: RunSettings, on_tick, on_snapshot, log: Log) -> Path:
    started = time.time()
    settings = settings.check()
    is_writer = this_rank() == 0  # only rank 0 writes files and talks
    log = log if is_writer else _quiet
    workspace = resolve_workspace(workspace)  # the other ranks only read
    start = _plan(workspace, settings, log if is_writer else None)
    device = resolve_device(start.settings.device)  # a resumed run's own device unless the call names one
    # Refuses a full-size run on a CPU without cpu_ok; the estimate it gives otherwise is preflight's to say.
    estimates.refuse_slow_cpu_run(start.settings.cfg, start.settings.resolution, start.settings.kimg, device,
                                  start.settings.cpu_ok)
    dist = Distributed(device)
    if start.settings.metrics_every > 0 and on_snapshot is None:
        log("metrics_every is set, but no on_snapshot measures anything: no metrics in stats.jsonl")
    run = _Run(workspace, start, device, dist, on_tick, on_snapshot, log, started)
    try:
        with reuse_freed_cpu_memory(device), cuda_training_backends(device) as backends, \
                os_errors_as_user_errors(f"training {start.run_dir.name}"):
            if backends is not None:
                log(f"cuDNN benchmark {'on' if backends['cudnn_benchmark'] else 'off (deterministic mode)'}, "
                    "no TF32 in float32 (as NVIDIA's training loop)")
            run_dir = run.run()
    finally:
        run.lock.release()
    if run.stop_reason == "interrupted":  # after the final state: `train && synth` must not go on
        raise TrainingInterrupted(f"{run_dir.name} stopped at {run.progress.cur_nimg / 1000:g} kimg; the final "
                                  "state is saved, continue with --resume latest")
    return run_dir


class TrainingInterrupted(KeyboardInterrupt):
    """What `train` raises after a Ctrl-C / the notebook's stop button / SIGTERM, once the final state is
    written: an interrupt still ends the program as one (the CLI's exit status 130), whatever was saved."""


def preflight(workspace, settings: RunSettings) -> str:
    """What a `train` call with `settings` is about to do, before it loads anything: the run, the device and,
    on a CPU, how long a full-size network would take there; then what a kill could cost (kill_cost). The one
    place that says so: notebooks 02-04 and the CLI print it before they call `train`, which does not repeat
    it. Raises the same UserError as `train` for a full-size run at >= 128 px on a CPU without cpu_ok."""
    workspace = resolve_workspace(workspace)
    resolved = resolved_settings(workspace, settings)
    resolution = resolved.resolution or choose_source(workspace, resolved.body_part,
                                                      classes_of(resolved.label)[0], None)[1]
    device = resolve_device(resolved.device)
    line = (f"{resolved.cfg} at {resolution} px to {resolved.kimg:g} kimg on {device}"
            f"{' (resuming ' + resolved.run + ')' if resolved.run and settings.resume else ''}")
    on_cpu = estimates.refuse_slow_cpu_run(resolved.cfg, resolution, resolved.kimg, device, resolved.cpu_ok)
    line = f"{line}; {on_cpu}" if on_cpu else line
    return f"{line}\n{kill_cost(resolved, resolution, device, _run_to_continue(workspace, settings, None))}"


def kill_cost(settings: RunSettings, resolution: int, device, run_dir: Optional[Path] = None) -> str:
    """The most training a kill could cost with these snapshot settings: at the run's own recent speed when
    its stats.jsonl has ticks (a resume), else at this project's estimate for the config and device."""
    rate = estimates.seconds_per_kimg(settings.cfg, resolution, device)
    recent = [line["sec_per_kimg"] for line in (snapshot.read_stats(run_dir) if run_dir else [])[-5:]
              if isinstance(line.get("sec_per_kimg"), (int, float)) and not line.get("partial")]
    if recent:
        median = float(np.median(recent))
        rate = (median, median, "this run's last ticks")
    return estimates.most_lost_by_a_kill(settings.snap, settings.kimg_per_tick, settings.snap_minutes, rate)


def settings_to_resume(workspace, run: Optional[str] = None, body_part: Optional[str] = None,
                       **changes) -> RunSettings:
    """The settings that continue a run exactly where its newest loadable state stopped (notebook 04:
    `loop.train(workspace, loop.settings_to_resume(workspace, RUN, kimg=KIMG, ...))`).

    run: a run name under data/experiments, a run folder, or None for the most recently changed run (of
    `body_part` when given); changes: run-control settings for this call (kimg = the new target,
    max_minutes, device, ...); everything else is the run's. A None keeps the run's own value where None is
    no value of the setting (KIMG = None: the run's target)."""
    unknown = sorted(set(changes) - {field.name for field in RunSettings.settings_fields()})
    if unknown:
        raise UserError(f"settings_to_resume got {', '.join(unknown)}, which are no training settings.",
                        f"Use the names of RunSettings, e.g. {', '.join(RunSettings.RUN_CONTROL[:4])}.")
    run_dir = find_run(workspace, run, body_part)
    given = {key: value for key, value in changes.items() if value is not None or RunSettings.optional(key)}
    settings = settings_for_resume(run_dir, {**given, "resume": str(run_dir)}, report=None)
    return dataclasses.replace(settings, given_names=tuple(given))


def find_run(workspace, run: Optional[str] = None, body_part: Optional[str] = None) -> Path:
    """The folder of run `run` (a name under data/experiments or a folder), or the most recently changed run
    (of `body_part` when given)."""
    workspace = resolve_workspace(workspace)
    if run is None:
        runs = [info for info in snapshot.list_runs(workspace)
                if body_part is None or _stored_body_part(info.path) == body_part]
        if not runs:
            of = f" of {body_part}" if body_part else ""
            raise UserError(f"There is no training run{of} in {workspace.experiments} yet.",
                            "Start one with notebook 02 / 03 or python -m mura_aug train.")
        return max(runs, key=lambda r: r.mtime).path
    run_dir = _resume_path(workspace, str(run))
    if not run_dir.is_dir():
        names = ", ".join(r.name for r in snapshot.list_runs(workspace)) or "none yet"
        raise UserError(f"No run named {run!r} in {workspace.experiments}.", f"Use one of: {names}.")
    return run_dir


def resolved_settings(workspace, settings: RunSettings) -> RunSettings:
    """The settings a `train` call with `settings` will run with, read without loading a state or writing
    anything (the CLI wires the metrics callback from them): for a resume, the run's stored ones combined by
    RunSettings.for_resume."""
    workspace = resolve_workspace(workspace)
    run_dir = _run_to_continue(workspace, settings, log=None)
    if run_dir is None or not snapshot.read_training_options(run_dir):
        return settings
    return settings_for_resume(run_dir, settings.given_values(), report=None)


def settings_for_resume(run_dir: Path, given: Dict[str, Any], report: Optional[Log],
                        state: Optional[dict] = None) -> RunSettings:
    """RunSettings.for_resume for a run folder: the run's settings are those of its training_options.json (the
    last call's), the shaping ones from `state` (the newest state's options) when it is given."""
    stored = {**(state["options"] if state is not None else {}), **snapshot.read_training_options(run_dir)}
    if state is not None:
        stored.update({key: value for key, value in state["options"].items()
                       if RENAMED.get(key, key) in RunSettings.SHAPING})
    stored["run"] = Path(run_dir).name  # the folder is the run; the name stored inside is only a label
    return RunSettings.for_resume(stored, given, report=report)


def without_timings(lines):
    """Stats lines without the keys that depend on the clock or the machine (to compare two runs)."""
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in lines]


# =====================================================================================================
# Where a call starts from
# =====================================================================================================

@dataclasses.dataclass
class _Start:
    settings: RunSettings  # with `run` and `resolution` decided
    run_dir: Path
    state: Optional[dict] = None  # a mura_aug training state to continue
    nvlabs: Optional[dict] = None  # the networks of an NVlabs pickle to continue (transfer.load_nvlabs_resume)


def _plan(workspace: Workspace, settings: RunSettings, log: Optional[Log]) -> _Start:
    """Which run folder this call trains, and from what: a state (resume), an NVlabs pickle, or nothing
    (a new run). Every rank runs this (read only); `log` is None on the ranks that do not talk."""
    given = settings.given_values()
    if settings.resume not in (None, "latest"):
        path = _resume_path(workspace, settings.resume)
        if path.suffix == ".pkl":
            return _plan_nvlabs(workspace, settings, path, log)
        if path.is_dir():
            _, state = snapshot.load_newest_state(path, log=log)
            if state is None:
                raise UserError(f"The run folder {path} holds no training state that loads.",
                                "Pass another run folder or a state-*kimg.pt file; python -m mura_aug runs "
                                f"--workspace {workspace.root} lists them.")
            folder = path
        else:
            state = snapshot.load_state(path)
            folder = path.parent
            problem = snapshot.state_mismatch(state, snapshot.read_training_options(folder), path, folder)
            if problem:
                raise UserError(f"The training state {path} is not this run's: {problem}.",
                                f"Resume its own run folder instead, or copy it into an empty folder of its own "
                                f"and resume that; python -m mura_aug runs --workspace {workspace.root} lists "
                                "the runs.")
        folder = folder.resolve()  # a state given by path continues in its own folder, wherever it lies
        return _Start(settings_for_resume(folder, given, log, state), folder, state=state)
    run_dir = _run_to_continue(workspace, settings, log) if settings.resume == "latest" else None
    if run_dir is not None:
        _, state = snapshot.load_newest_state(run_dir, log=log)
        if state is not None:
            return _Start(settings_for_resume(run_dir, given, log, state), run_dir, state=state)
        if log is not None:
            log(f"no training state in {run_dir} yet: starting the run from the beginning")
        if snapshot.read_training_options(run_dir):  # the run's own settings, as it was started
            settings = settings_for_resume(run_dir, given, log)
    # A new run.
    if settings.resolution is None:
        settings = settings.replace(resolution=choose_source(workspace, settings.body_part,
                                                             classes_of(settings.label)[0], None)[1])
    if run_dir is None:
        run_dir = workspace.run(settings.run or run_name(settings.body_part, settings.label, settings.cfg,
                                                         settings.resolution)).path
    if settings.resume is None and snapshot.list_snapshots(run_dir):
        newest = snapshot.list_snapshots(run_dir)[-1]
        raise UserError(f"The run folder {run_dir} already holds snapshots (up to {newest.kimg:g} kimg).",
                        "Pass --resume latest (RESUME = 'latest' in the notebook) to continue it, or "
                        "--run NAME to start a separate run.")
    return _Start(settings.replace(run=run_dir.name), run_dir)


def _plan_nvlabs(workspace: Workspace, settings: RunSettings, path: Path, log: Optional[Log]) -> _Start:
    nets = transfer.load_nvlabs_resume(path, log)
    resolution = int(nets["G"].init_kwargs["img_resolution"])  # the pickle's, whatever was asked
    settings = settings.replace(resolution=resolution)
    run_dir = workspace.run(settings.run or run_name(settings.body_part, settings.label, settings.cfg,
                                                     resolution)).path
    if snapshot.list_snapshots(run_dir):
        raise UserError(f"The run folder {run_dir} already holds snapshots; continuing from the NVlabs "
                        f"pickle {path.name} would overwrite them.",
                        "Pass --resume latest to continue that run, or --run NAME for a new folder.")
    return _Start(settings.replace(run=run_dir.name), run_dir, nvlabs=nets)


def _run_to_continue(workspace: Workspace, settings: RunSettings, log: Optional[Log]) -> Optional[Path]:
    """The existing run folder `resume` refers to, or None (a new run). For 'latest': the run named by
    `run`, else the most recently changed run of this label and body part (and of the cfg and resolution
    where the user gave them)."""
    if settings.resume not in (None, "latest"):
        path = _resume_path(workspace, settings.resume)
        folder = path if path.is_dir() else path.parent
        return folder if path.suffix != ".pkl" and folder.is_dir() else None
    if settings.resume is None:
        return None
    if settings.run:
        folder = workspace.run(settings.run).path
        return folder if folder.is_dir() else None
    given = settings.given_values()
    candidates = []
    for info in snapshot.list_runs(workspace):
        stored = RunSettings.stored_values(snapshot.read_training_options(info.path))
        if (stored.get("label") == settings.label and _stored_body_part(info.path) == settings.body_part
                and given.get("cfg") in (None, stored.get("cfg"))
                and given.get("resolution") in (None, stored.get("resolution"))):
            candidates.append(info)
    if not candidates:
        return None
    chosen = max(candidates, key=lambda info: info.mtime)
    if len(candidates) > 1 and log is not None:
        log(f"--resume latest: {len(candidates)} runs of {settings.body_part} {settings.label} match; continuing "
            f"the most recently changed, {chosen.name} (name another with --run).")
    return chosen.path


def _run_identity(start: _Start) -> tuple:
    """(run_id, lineage) of the run this call trains (snapshot.state_mismatch reads them). A resume in the
    folder the state was written in keeps the state's id; a state written in a folder of another name (the
    run was copied or renamed, or it predates run ids) starts a new id whose lineage adds the id it came from
    and the kimg where it left it, so the copy's own earlier states still count and the original's later
    ones do not."""
    if start.state is None:
        return uuid.uuid4().hex, []
    options = start.state.get("options") or {}
    run_id, lineage = options.get("run_id"), list(options.get("lineage") or [])
    written_in = options.get("run", start.state.get("run"))
    if run_id and written_in == start.run_dir.name:
        return run_id, lineage
    kimg = start.state["progress"]["cur_nimg"] / 1000
    return uuid.uuid4().hex, [*lineage, {"run_id": run_id, "run": written_in, "until_kimg": kimg}]


def _run_folder_named(workspace: Workspace, name: str) -> Optional[Path]:
    """The folder of the run called `name` under data/experiments, when `name` is a plain name of one."""
    try:
        folder = workspace.run(name).path
    except UserError:  # a path, not a name
        return None
    return folder if folder.is_dir() else None


def _resume_path(workspace: Workspace, resume: str) -> Path:
    """What --resume names: a run of the workspace by its name (the run, wherever the call runs from), else
    a path (a state file, a run folder, an NVlabs pickle)."""
    return _run_folder_named(workspace, resume) or Path(resume).expanduser()


def _stored_body_part(run_dir: Path) -> str:
    return snapshot.read_training_options(run_dir).get("body_part", RunSettings.default_of("body_part"))


def _quiet(text: str) -> None:
    """The log of ranks other than 0."""


# =====================================================================================================
# One call of `train`
# =====================================================================================================

@dataclasses.dataclass
class _Progress:
    """The counters of a run; a state holds them. A state written between two tick boundaries (a stop
    mid-tick) also holds that tick's statistics so far (`partial_tick`), so its line comes out whole."""
    cur_nimg: int = 0  # real images shown to D so far
    cur_tick: int = 0  # ticks completed
    batch_idx: int = 0  # iterations so far (the key of that iteration's random draws)
    tick_start_nimg: int = 0  # image count at the start of the tick in progress
    total_sec: float = 0.0  # training seconds over all calls

    def to_state(self) -> Dict[str, Any]:
        return {"cur_nimg": self.cur_nimg, "cur_tick": self.cur_tick, "batch_idx": self.batch_idx,
                "tick_start_nimg": self.tick_start_nimg, "total_sec": self.total_sec}

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "_Progress":
        return cls(int(state["cur_nimg"]), int(state["cur_tick"]), int(state["batch_idx"]),
                   int(state["tick_start_nimg"]), float(state.get("total_sec", 0.0)))


def tick_end_nimg(tick_start_nimg: float, tick_nimg: float) -> float:
    """The image count that ends the tick started at `tick_start_nimg`: the next multiple of the tick length
    (k x kimg_per_tick), so that tick boundaries fall on the same kimg whatever cuts and resumes came between
    (and a run resumed from an NVlabs pickle at 120 kimg continues on the same grid)."""
    return (math.floor(tick_start_nimg / tick_nimg + 1e-9) + 1) * tick_nimg


class _StopRequest:
    """The first Ctrl-C (SIGINT; the notebook's stop button) or SIGTERM asks the loop to finish the current
    iteration and write a final state; a second one interrupts at once.

    SIGTERM is what `kill`, batch schedulers before their time limit, and torchrun pass on to its workers
    when torchrun itself is told to stop; without a handler it would end the process mid-iteration, with
    no final state. Under torchrun every rank sees the request and the ranks agree to stop after the same
    iteration (the per-iteration all_reduce), so rank 0's final state is a consistent one."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False


class _Run:
    """Everything one `train` call needs on one rank, built step by step by `run()`."""

    def __init__(self, workspace: Workspace, start: _Start, device: torch.device, dist: Distributed,
                 on_tick, on_snapshot, log: Log, started: float):
        self.workspace, self.start, self.settings = workspace, start, start.settings
        self.run_dir = RunFolder(start.run_dir)
        self.device, self.dist, self.log, self.started = device, dist, log, started
        self.on_tick, self.on_snapshot = on_tick, on_snapshot
        self.lock = snapshot.RunLock(self.run_dir.path)
        self.progress = _Progress()
        self.partial_tick: Optional[Dict[str, Any]] = None  # the statistics of a tick cut by a stop (see end_tick)
        self.stager: Optional[staging.Stager] = None  # rank 0, when snapshots go through local disk first
        self.history: List[dict] = list((start.state or {}).get("options", {}).get("history", []))
        self.stop_reason: Optional[str] = None  # why the loop ended ('done', 'max_minutes', 'interrupted')
        self.run_id, self.lineage = _run_identity(start)

    def run(self) -> Path:
        self.build_networks()
        self.take_run_folder()
        self.load_data()
        self.build_training()
        self.restore()
        total_nimg = int(round(self.settings.kimg * 1000))
        self.start_log(total_nimg)
        if self.progress.cur_nimg >= total_nimg:
            self.log(f"{self.run_dir.name} is already at {self.progress.cur_nimg / 1000:g} kimg >= the target "
                     f"{total_nimg / 1000:g} kimg; nothing to train (raise --kimg to train longer)")
            return self.run_dir.path
        stop_reason = self.stop_reason = self.loop(total_nimg)
        if self.stager is not None:
            self.stager.finish()  # what the workspace has not taken yet: more tries, else where it is
        kimg = self.progress.cur_nimg / 1000
        if stop_reason == "done":
            message = f"finished: {kimg:g} kimg"
        elif stop_reason == "max_minutes":
            message = (f"stopped after {self.settings.max_minutes:g} minutes at {kimg:g} kimg (--max-minutes); "
                       "continue with --resume latest")
        else:
            message = f"interrupted at {kimg:g} kimg; the final state is saved, continue with --resume latest"
        self.log(f"{self.run_dir.name}: {message}")
        return self.run_dir.path

    # --- 1. config and networks --------------------------------------------------------------------
    def build_networks(self) -> None:
        start, settings = self.start, self.settings
        if start.state is not None:
            self.config = TrainConfig.from_dict(start.state["config"])
            self.G_kwargs, self.D_kwargs = dict(start.state["G_kwargs"]), dict(start.state["D_kwargs"])
        elif start.nvlabs is not None:
            self.G_kwargs = dict(start.nvlabs["G"].init_kwargs)
            self.D_kwargs = dict(start.nvlabs["D"].init_kwargs)
            self.config = self.make_config(transferred=True)
        else:
            self.config = self.make_config(transferred=bool(settings.transfer))
            self.G_kwargs, self.D_kwargs = dict(self.config.G_kwargs), dict(self.config.D_kwargs)
            rng.seed_everything(settings.seed)  # a new run's initial weights come from the seed
        from mura_aug.gan.networks import Discriminator, Generator

        self.G = Generator(**self.G_kwargs).train().requires_grad_(False).to(self.device)
        self.D = Discriminator(**self.D_kwargs).train().requires_grad_(False).to(self.device)
        self.G_ema = Generator(**self.G_kwargs).eval().requires_grad_(False).to(self.device)
        self.G_ema.load_state_dict(self.G.state_dict())
        self.networks = {"G": self.G, "D": self.D, "G_ema": self.G_ema}
        if start.nvlabs is not None:
            for key, module in self.networks.items():
                module.load_state_dict(start.nvlabs[key].state_dict())
        with self.dist.agreement():  # also a barrier: every rank has read its inputs before rank 0 writes
            if settings.transfer and start.state is None and self.dist.is_writer:
                # rank 0 reads (maybe downloads) the weights; the broadcast below shares them
                transfer.transfer_into(self.networks, settings.transfer, self.workspace, self.log)
        self.dist.broadcast_modules(self.G, self.D, self.G_ema)

    def make_config(self, transferred: bool) -> TrainConfig:
        settings = self.settings
        overrides = {key: value for key, value in dict(batch=settings.batch, gamma=settings.gamma,
                                                         batch_gpu=settings.batch_gpu).items() if value is not None}
        if settings.label == "both":
            overrides["c_dim"] = 2  # one-hot column = label (0 negative, 1 positive)
        config = make_config(settings.cfg, settings.resolution, transfer=transferred, **overrides)
        if self.dist.world_size > 1:
            # NVlabs: a pass holds at most batch / GPUs images; D's minibatch-std group is chosen to tile it.
            _, chunk = per_rank_batch(config.batch_size, self.dist.world_size, config.batch_gpu)
            if chunk != config.batch_gpu:
                config = make_config(settings.cfg, settings.resolution, transfer=transferred,
                                     **{**overrides, "batch_gpu": chunk})
        return config

    # --- 2. the run folder --------------------------------------------------------------------------
    def take_run_folder(self) -> None:
        with self.dist.agreement():
            if self.dist.is_writer:
                self.run_dir.path.mkdir(parents=True, exist_ok=True)
                self.lock.acquire()  # before touching anything: another process may own this run
                snapshot.remove_stale_temporaries(self.run_dir.path)
                self.stager = staging.Stager.for_run(self.run_dir, self.settings.staging, self.settings.keep,
                                                     self.settings.keep_networks_every, self.log)

    # --- 3. the data and the batch split ------------------------------------------------------------
    def load_data(self) -> None:
        """One uint8 array on local disk; rank 0 builds the cache first, the others then only read it."""
        config = self.config
        self.batch_size = config.batch_size
        self.rank_batch, self.batch_gpu = per_rank_batch(config.batch_size, self.dist.world_size, config.batch_gpu)
        mbstd = self.D.b4.mbstd  # None when D has no minibatch-std layer; group_size None = the whole pass
        mbstd_group = int(mbstd.group_size) if mbstd is not None and mbstd.group_size else 1
        if self.batch_gpu % min(mbstd_group, self.batch_gpu):
            raise UserError(f"Each forward pass holds {self.batch_gpu} images, not a multiple of D's minibatch-std "
                            f"group {mbstd_group} (this run's discriminator was built for it).",
                            f"Run on a number of GPUs that leaves a multiple of {mbstd_group} images per GPU "
                            f"(batch {self.batch_size}), or start a new run.")
        self.frozen = transfer.freeze_d_names(self.D, self.settings.freeze_d)

        def load():
            return load_training_images(self.workspace, self.settings.body_part, self.settings.label,
                                        int(self.G_kwargs["img_resolution"]),
                                        progress=self.settings.progress and self.dist.is_writer, log=self.log)

        with self.dist.agreement():
            if self.dist.is_writer:
                self.images, self.labels = load()
        if not self.dist.is_writer:
            self.images, self.labels = load()
        self.sampler = DataSampler(len(self.images), seed=self.settings.seed, mirror=self.settings.mirror)

    # --- 4. loss, augmentation, optimizers ----------------------------------------------------------
    def build_training(self) -> None:
        from mura_aug.gan.augment import build_augmentation
        from mura_aug.gan.loss import StyleGAN2Loss

        config = self.config
        self.augment_pipe, self.ada = build_augmentation(batch_size=self.batch_size, device=self.device,
                                                         **config.augment)
        if self.augment_pipe is not None:
            self.augment_pipe.train().requires_grad_(False)
        self.loss = StyleGAN2Loss(G=self.G, D=self.D, augment_pipe=self.augment_pipe, **config.loss_kwargs)
        self.G_opt = _adam(self.G.parameters(), config.G_opt_kwargs)
        self.D_opt = _adam(self.D.parameters(), config.D_opt_kwargs)
        self.phases = []
        for name, module, opt, reg_interval in (("G", self.G, self.G_opt, config.G_reg_interval),
                                                ("D", self.D, self.D_opt, config.D_reg_interval)):
            # The tensors a phase trains, listed once: walking the module tree for them on every phase took
            # ~2 ms per training step (a tiny network's step is ~60 ms on a CPU). Loading a state copies into
            # these same tensors, so the lists stay true for the whole call.
            params = list(module.parameters())
            trained = [param for param_name, param in module.named_parameters()
                       if name == "G" or param_name not in self.frozen]
            common = dict(module=module, opt=opt, params=params, trained=trained)
            if reg_interval is None:
                self.phases.append(dict(name=name + "both", interval=1, **common))
            else:
                self.phases.append(dict(name=name + "main", interval=1, **common))
                self.phases.append(dict(name=name + "reg", interval=int(reg_interval), **common))
        # G_ema follows G tensor by tensor (iteration); the pairs, like the phases' lists, are made once.
        self.ema_params = (list(self.G_ema.parameters()), list(self.G.parameters()))
        self.ema_buffers = (list(self.G_ema.buffers()), list(self.G.buffers()))
        # The precision of this call (devices.precision): autocast or not, NVIDIA's fp16 blocks or not, a grad
        # scaler or not. The networks' weights and kwargs are the same for all three.
        self.precision = precision(self.settings.amp, self.device)
        self.amp_dtype = self.precision.autocast
        from mura_aug.gan.networks import set_fp16_blocks

        for module in (self.G, self.D):
            set_fp16_blocks(module, self.precision.fp16_blocks)
        self.scaler = grad_scaler(self.device) if self.precision.grad_scaler else None
        # The running statistics a phase updates chunk by chunk (see run_phase): G's w_avg in the D main pass
        # (update_emas), the loss' path-length mean in the G regularisation pass.
        w_avg = [(lambda b=b: b, lambda v, b=b: b.copy_(v)) for name, b in self.G.named_buffers()
                 if name.endswith("w_avg")]
        pl_mean = [(lambda: self.loss.pl_mean, self.set_pl_mean)] if self.loss.pl_weight else []
        self.running = {"Dmain": w_avg, "Dboth": w_avg, "Greg": pl_mean, "Gboth": pl_mean}

    def set_pl_mean(self, value: torch.Tensor) -> None:
        self.loss.pl_mean = value.clone()

    # --- 5. where training continues from -----------------------------------------------------------
    def restore(self) -> None:
        """Every rank reads the same state, so every rank continues from the same point."""
        state, nvlabs = self.start.state, self.start.nvlabs
        if nvlabs is not None:
            self.progress = _Progress(cur_nimg=nvlabs["kimg"] * 1000, tick_start_nimg=nvlabs["kimg"] * 1000)
            if self.augment_pipe is not None and nvlabs.get("augment_p") is not None:
                self.augment_pipe.p.copy_(torch.as_tensor(float(nvlabs["augment_p"])))
        if state is not None:
            for key, module in self.networks.items():
                module.load_state_dict(state[key])
            self.G_opt.load_state_dict(state["G_opt"])
            self.D_opt.load_state_dict(state["D_opt"])
            if self.augment_pipe is not None and state.get("augment_p") is not None:
                self.augment_pipe.p.copy_(torch.as_tensor(float(state["augment_p"])))
            if self.ada is not None and state.get("ada") is not None:
                self.ada.load_state_dict(state["ada"])
            if state.get("loss") is not None:
                self.loss.load_state_dict(state["loss"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.sampler.load_state_dict(state["data"])
            self.progress = _Progress.from_state(state["progress"])
            self.partial_tick = state.get("partial_tick")
            rng.set_global_state(state["rng"])
            self.log(f"resuming {self.run_dir.name} from {self.run_dir.state(self.progress.cur_nimg / 1000).name}: "
                     f"{self.progress.cur_nimg / 1000:g} kimg, tick {self.progress.cur_tick}")
        if self.frozen:
            self.log(f"Freeze-D: {len(self.frozen)} parameter tensors of D's highest-resolution blocks stay fixed")
        if self.dist.world_size > 1:
            self.log(f"{self.dist.world_size} processes (GPUs): {self.rank_batch} images each per iteration, "
                     f"{self.batch_gpu} per pass, {self.dist.backend} backend")
        if self.settings.compile:
            self.loss = self.compiled_loss()

    def compiled_loss(self):
        """The loss of --compile: G's mapping and synthesis networks and D torch.compile'd for the main phases
        (the loss calls G.mapping and G.synthesis, so compiling G itself would compile nothing it runs). The
        regularisation phases stay eager: R1 and the path length differentiate twice, which torch.compile
        does not support ("torch.compile with aot_autograd does not currently support double backward")."""
        from mura_aug.gan.loss import StyleGAN2Loss

        main = StyleGAN2Loss(G=_CompiledGenerator(self.G), D=torch.compile(self.D), augment_pipe=self.augment_pipe,
                             **self.config.loss_kwargs)
        return _CompiledMainPhases(main, self.loss)

    # --- 6. the run's log and metadata --------------------------------------------------------------
    def start_log(self, total_nimg: int) -> None:
        """Rewind stats.jsonl to the state's tick, check the disk, write training_options.json and reals.png."""
        with self.dist.agreement():
            if not self.dist.is_writer:
                return
            # A resumed run's log is cut back to its state's tick; a fresh run starts a fresh log.
            tick = self.progress.cur_tick if self.start.state is not None else -1
            if self.stager is not None:  # the lines an earlier call could not append come first
                self.stager.rewind_pending(tick)
                self.stager.retry()
            snapshot.rewind_stats(self.run_dir.path, tick)
            if self.progress.cur_nimg >= total_nimg:
                return
            state_bytes = snapshot.estimate_state_bytes(self.G, self.D)
            network_bytes = sum(t.numel() * t.element_size() for t in self.G_ema.state_dict().values())
            snapshot.check_free_space(self.run_dir.path, state_bytes, network_bytes)
            self.history.append({"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "from_kimg": self.progress.cur_nimg / 1000, "target_kimg": total_nimg / 1000,
                                 "resumed": self.start.state is not None, "world_size": self.dist.world_size})
            atomic_write_json(self.run_dir.options, {
                **self.stored_options(), "workspace": str(self.workspace.root), "config": self.config.to_dict(),
                "G_kwargs": self.G_kwargs, "D_kwargs": self.D_kwargs, "num_images": int(len(self.images)),
                "batch_size": self.batch_size, "batch_per_pass": self.batch_gpu,
                "world_size": self.dist.world_size, "batch_per_rank": self.rank_batch,
                "device_used": str(self.device),
                "amp_used": self.precision.name,
                "torch": torch.__version__})
            if not self.run_dir.reals.exists():
                rows, cols = snapshot.grid_shape(int(self.G_kwargs["img_resolution"]))
                pick = np.random.default_rng(0).choice(len(self.images), size=min(rows * cols, len(self.images)),
                                                       replace=False)
                snapshot.save_image_grid(np.asarray(self.images[np.sort(pick)]), rows, cols, self.run_dir.reals)

    def stored_options(self) -> Dict[str, Any]:
        """The settings as a run stores them (training_options.json and every state's options)."""
        options = {**self.settings.to_dict(), "run": self.run_dir.name, "run_id": self.run_id,
                   "lineage": self.lineage, "history": self.history}
        if self.start.nvlabs is not None:
            options["nvlabs_resume"] = {"kimg": self.start.nvlabs["kimg"], "augment_p": self.start.nvlabs.get(
                "augment_p"), "path": self.settings.resume}
        elif self.start.state is not None and "nvlabs_resume" in self.start.state["options"]:
            options["nvlabs_resume"] = self.start.state["options"]["nvlabs_resume"]
        return options

    # --- 7. the loop --------------------------------------------------------------------------------
    def loop(self, total_nimg: int) -> str:
        """Iterate until the target, the time limit or a stop request; returns why it stopped."""
        from tqdm.auto import tqdm

        settings, dist, progress = self.settings, self.dist, self.progress
        show_bar = settings.progress and dist.is_writer
        bar = tqdm(total=total_nimg / 1000, initial=progress.cur_nimg / 1000, unit="kimg", desc=self.run_dir.name,
                   disable=not show_bar, bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}]")
        self.say = (lambda text: bar.write(text)) if show_bar else self.log
        tick_nimg = settings.kimg_per_tick * 1000
        max_seconds = settings.max_minutes * 60 if settings.max_minutes else None
        mine = slice(dist.rank * self.rank_batch, (dist.rank + 1) * self.rank_batch)  # this rank's part of a batch
        self.tick_sums: Dict[str, float] = {}
        self.tick_counts: Dict[str, int] = {}
        tick_started = self.last_snapshot_at = time.time()  # the call starts from a snapshot (or from nothing)
        if self.partial_tick is not None:  # continue the tick a stop cut: its statistics so far, its seconds
            if dist.rank == 0:  # they are those of all ranks together; merge_sums adds the other ranks' new ones
                self.tick_sums = dict(self.partial_tick["sums"])
                self.tick_counts = {key: int(value) for key, value in self.partial_tick["counts"].items()}
            tick_started -= float(self.partial_tick.get("seconds", 0.0))
        tick_end = tick_end_nimg(progress.tick_start_nimg, tick_nimg)
        first_step_done = False
        try:
            with _StopRequest() as stop:
                while True:
                    sign_sum, sign_count = self.iteration(mine)
                    progress.cur_nimg += self.batch_size
                    progress.batch_idx += 1
                    # One small all_reduce per iteration: ADA's statistic of the whole batch, and the stop
                    # decision (a clock or a Ctrl-C seen by any rank stops all of them after the same iteration).
                    out_of_time = max_seconds is not None and time.time() - self.started >= max_seconds
                    shared = torch.tensor([sign_sum, sign_count, float(out_of_time), float(stop.requested)],
                                          dtype=torch.float64)
                    sign_sum, sign_count, out_of_time, interrupted = dist.all_reduce_sum(shared).tolist()
                    if self.ada is not None:
                        if sign_count > 0:
                            self.ada.sign_sum += sign_sum
                            self.ada.sign_count += sign_count
                        self.ada.update(self.augment_pipe)
                    bar.update(self.batch_size / 1000)
                    if dist.is_writer:
                        self.lock.refresh()
                    if not first_step_done:
                        first_step_done = True
                        self.log(f"first training step done {time.time() - self.started:.1f} s after the call "
                                 "started")
                    stop_reason = ("done" if progress.cur_nimg >= total_nimg else "max_minutes" if out_of_time > 0
                                   else "interrupted" if interrupted > 0 else None)
                    complete = progress.cur_nimg >= tick_end
                    if stop_reason is None and not complete:
                        continue
                    tick_seconds = time.time() - tick_started
                    self.end_tick(tick_seconds, total_nimg, stop_reason, complete)
                    tick_started = time.time()
                    tick_end = tick_end_nimg(progress.tick_start_nimg, tick_nimg)
                    if stop_reason is not None:
                        return stop_reason
        finally:
            bar.close()

    def iteration(self, mine: slice) -> tuple:
        """One iteration on this rank's slice of the batch: every phase that is due, then G_ema. Returns this
        rank's (sum of sign(D(real)), count) for ADA."""
        progress = self.progress
        idx, flips = self.sampler.next_indices(self.batch_size)  # the whole batch: every rank runs the sampler
        real_img, real_c = batch_tensors(self.images, self.labels, idx[mine], flips[mine], self.G.c_dim, self.device)
        if self.settings.channels_last and self.device.type == "cuda":
            real_img = real_img.contiguous(memory_format=torch.channels_last)
        gen_z, gen_c = rng.draw_latents(self.settings.seed, progress.batch_idx, len(self.phases), self.batch_size,
                                        self.G.z_dim, self.G.c_dim, self.labels)
        sign_sum = sign_count = 0.0
        for phase_index, phase in enumerate(self.phases):
            if progress.batch_idx % phase["interval"] != 0:
                continue
            signs = self.run_phase(phase, phase_index, real_img, real_c, gen_z[phase_index, mine].to(self.device),
                                   gen_c[phase_index, mine].to(self.device))
            sign_sum, sign_count = sign_sum + signs[0], sign_count + signs[1]
        with torch.no_grad():
            ema_beta = self.config.ema_beta(progress.cur_nimg)  # half-life ema_kimg, ramped up at the start
            # one fused update of all tensors: p_ema += (1 - beta) * (p - p_ema)
            torch._foreach_lerp_(*self.ema_params, 1.0 - ema_beta)
            torch._foreach_copy_(*self.ema_buffers)  # w_avg; the filters and constant noise do not change
        return sign_sum, sign_count

    def run_phase(self, phase: dict, phase_index: int, real_img, real_c, gen_z, gen_c) -> tuple:
        """Run one phase over this rank's chunks, sum the gradients over all ranks, step the optimizer.

        Each chunk's loss is weighted by its share of the whole batch (times the lazy-regularisation interval),
        so the summed gradient is that of the batch mean however the batch is cut into chunks and ranks. Before
        each chunk torch's global generators are seeded from (seed, iteration, phase, chunk number in the whole
        batch), and the running statistics the phase updates (w_avg, pl_mean) are reset to their value at the
        start of the phase; the phase ends with their mean over all chunks. Returns (sum of sign(D(real)),
        count) of D main.

        Out of GPU memory in a pass: the phase's gradients and running statistics are put back as they were at
        its start, `batch_gpu` is halved (the chunks then accumulate to the same batch: the run's settings stay
        as chosen), and the same phase of the same iteration runs again (`smaller_passes`)."""
        module, opt, device = phase["module"], phase["opt"], self.device
        running = self.running.get(phase["name"], [])
        starts = [get().detach().to(device).clone() for get, _ in running]
        while True:
            out_of_memory = None
            try:
                sign_sum, sign_count, sums, counts = self.phase_passes(phase, phase_index, real_img, real_c, gen_z,
                                                                       gen_c, running, starts)
                break
            except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                if not is_out_of_memory(exc):
                    raise
                out_of_memory = out_of_memory_line(exc)
            # Outside the except clause, so that the failed pass' tensors (held by the traceback) are freed.
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(False)
            for (_, put), start in zip(running, starts):
                put(start)
            free_accelerator_memory(device)
            self.smaller_passes(phase["name"], out_of_memory)
        for key, value in sums.items():  # this phase's numbers join the tick's only once it has succeeded
            self.tick_sums[key] = self.tick_sums.get(key, 0.0) + value
            self.tick_counts[key] = self.tick_counts.get(key, 0) + counts[key]
        if self.scaler is not None:
            self.scaler.unscale_(opt)
            self.scaler.step(opt)
            self.scaler.update()
        else:
            grads = [param.grad for param in phase["params"] if param.grad is not None]
            # NVlabs' clean-up of non-finite gradients; one fused check tells whether there is any (the usual
            # case has none, and then the per-tensor passes would change nothing).
            if grads and any_non_finite(grads):
                for grad in grads:
                    torch.nan_to_num(grad, nan=0, posinf=1e5, neginf=-1e5, out=grad)
            opt.step()
        return sign_sum, sign_count

    def phase_passes(self, phase: dict, phase_index: int, real_img, real_c, gen_z, gen_c, running, starts) -> tuple:
        """The passes of one phase (run_phase): gradients summed over the chunks and ranks, the running
        statistics set to their mean. Returns (sign sum, sign count, the phase's sums and counts of the
        logged numbers)."""
        module, opt = phase["module"], phase["opt"]
        sign_sum = sign_count = 0.0
        sums: Dict[str, float] = {}
        counts: Dict[str, int] = {}
        opt.zero_grad(set_to_none=True)
        trained = phase["trained"]
        for param in trained:
            param.requires_grad_(True)
        totals = [torch.zeros_like(start) for start in starts]
        chunks = list(zip(real_img.split(self.batch_gpu), real_c.split(self.batch_gpu), gen_z.split(self.batch_gpu),
                          gen_c.split(self.batch_gpu)))
        first_chunk = self.dist.rank * self.rank_batch // self.batch_gpu  # chunk number in the whole batch
        # With several chunks, each chunk's gradient is summed as a whole (chunk 1 + chunk 2 + ...), not term by
        # term as autograd would (a D main chunk has two backward passes), so that 2 chunks in one process add
        # up in the same order as 1 chunk on each of 2 ranks.
        chunk_grads: Dict[int, torch.Tensor] = {}
        for chunk_index, (img, c, z, gc) in enumerate(chunks):
            for (_, put), start in zip(running, starts):
                put(start)
            rng.seed_chunk(self.settings.seed, self.progress.batch_idx, phase_index, first_chunk + chunk_index)
            gain = float(phase["interval"]) * len(img) / self.batch_size
            mixed = torch.autocast(device_type=self.device.type, dtype=self.amp_dtype) \
                if self.amp_dtype is not None else contextlib.nullcontext()
            with mixed:
                stats = self.loss.accumulate_gradients(phase=phase["name"], real_img=img, real_c=c, gen_z=z,
                                                       gen_c=gc, gain=gain, scaler=self.scaler)
            for (get, _), total in zip(running, totals):
                total += get().detach()
            if len(chunks) > 1:
                for index, param in enumerate(trained):
                    if param.grad is not None:
                        chunk_grads[index] = param.grad if index not in chunk_grads else chunk_grads[index] + param.grad
                        param.grad = None
            for key, value in stats.items():
                value = float(value)
                if math.isfinite(value):
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
                    if key == "D_real_sign" and phase["name"] in ("Dmain", "Dboth"):
                        count = float(stats["D_real_count"])
                        sign_sum += float(round(value * count))  # a sum of signs: an integer, whatever the rounding
                        sign_count += count
        for index, grad in chunk_grads.items():
            trained[index].grad = grad
        for param in trained:
            param.requires_grad_(False)
        self.dist.sum_gradients(trained, totals)
        for (_, put), total in zip(running, totals):
            put(total / (self.batch_size // self.batch_gpu))
        return sign_sum, sign_count, sums, counts

    def smaller_passes(self, phase_name: str, error: str) -> None:
        """After running out of memory: halve `batch_gpu` (to the largest size below half that divides this
        rank's batch and tiles D's minibatch-std groups) and say so once; a UserError naming what would fit
        when one image per pass did not, or when several processes train together (their passes must stay
        the same size, so one rank cannot shrink alone)."""
        resolution, cfg = int(self.G_kwargs["img_resolution"]), self.settings.cfg
        where = accelerator_memory_text(self.device)
        if self.dist.world_size > 1:
            raise UserError(f"Process {self.dist.rank} of this {self.dist.world_size}-process run ran out of memory "
                            f"in {phase_name} with {self.batch_gpu} images per pass ({error}) on {where}.",
                            f"Start a new run with --batch-gpu {max(self.batch_gpu // 2, 1)} (the same training in "
                            "smaller passes), or train on one GPU, where the pass size halves by itself.")
        if self.batch_gpu == 1:
            smaller = [f"--resolution {resolution // 2} (RESOLUTION = {resolution // 2})"] if resolution > 16 else []
            if cfg != "tiny":
                smaller.append("--cfg tiny")
            if self.precision.name == "fp32" and self.device.type == "cuda":
                smaller.append("--amp auto (half-precision activations take half the memory)")
            raise UserError(f"Training {cfg} at {resolution} px does not fit into {where}, not even with one image "
                            f"per pass ({phase_name}: {error}).",
                            f"Start a new run with {' or '.join(smaller + ['a GPU with more memory'])}; close other "
                            "notebooks that hold GPU memory (Runtime > Manage sessions in Colab).")
        mbstd = self.D.b4.mbstd
        group = int(mbstd.group_size) if mbstd is not None and mbstd.group_size else 1
        old = self.batch_gpu
        self.batch_gpu = max(size for size in range(1, old // 2 + 1)
                             if self.rank_batch % size == 0 and size % min(group, size) == 0)
        self.log(f"out of GPU memory in {phase_name} with {old} images per pass: continuing with {self.batch_gpu} "
                 f"per pass from the same step (gradients accumulate to the same batch of {self.batch_size}; "
                 f"this call only, a resumed run starts at {old} again)")

    # --- 8. the end of a tick -----------------------------------------------------------------------
    def end_tick(self, tick_seconds: float, total_nimg: int, stop_reason: Optional[str], complete: bool = True
                 ) -> None:
        """The stats line (over all ranks' chunks), maybe metrics and a snapshot (rank 0), on_tick.

        complete: the tick reached its boundary (tick_end_nimg). A stop before it (the target, the time limit,
        a stop request between two boundaries) writes the line of the tick so far marked `partial` and a state
        holding the tick's statistics; a resume drops that line (rewind_stats) and writes the whole tick's
        line at its boundary, the same line as an uninterrupted run's."""
        settings, progress = self.settings, self.progress
        progress.total_sec += tick_seconds
        tick_kimg = (progress.cur_nimg - progress.tick_start_nimg) / 1000
        sums, counts = self.dist.merge_sums(self.tick_sums, self.tick_counts)
        line: Dict[str, Any] = {"tick": progress.cur_tick + 1, "kimg": round(progress.cur_nimg / 1000, 6)}
        for key in sorted(sums):
            line[key] = sums[key] / max(counts[key], 1)
        if "D_real_sign" in line:
            line["r_t"] = line["D_real_sign"]
        line["augment_p"] = float(self.augment_pipe.p.item()) if self.augment_pipe is not None else 0.0
        if self.ada is not None and self.ada.r_t is not None:
            line["r_t"] = float(self.ada.r_t)
        line["sec_per_tick"] = round(tick_seconds, 3)
        line["sec_per_kimg"] = round(tick_seconds / max(tick_kimg, 1e-9), 3)
        line["total_sec"] = round(progress.total_sec, 1)
        line["eta_sec"] = round((total_nimg - progress.cur_nimg) / 1000 * line["sec_per_kimg"], 1)
        line.update(_memory_stats(self.device))
        line["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if stop_reason not in (None, "done"):
            line["stop_reason"] = stop_reason
        if complete:
            progress.cur_tick += 1
            progress.tick_start_nimg = progress.cur_nimg
            self.partial_tick = None
        else:
            line["partial"] = True
            self.partial_tick = {"sums": dict(sums), "counts": dict(counts), "seconds": tick_seconds}
        # Every random draw up to here belongs to this tick; a state written now resumes from here.
        rng_at_tick_end = rng.global_state()
        every_snap = progress.cur_tick % settings.snap == 0
        # The clock of rank 0 decides a time-based snapshot: only rank 0 writes, the others wait for it anyway.
        on_time = settings.snap_minutes is not None and \
            time.time() - self.last_snapshot_at >= settings.snap_minutes * 60
        snapshot_now = stop_reason is not None or every_snap or on_time
        measure_now = (stop_reason is not None or every_snap) and settings.metrics_every > 0 and \
            (progress.cur_tick // settings.snap) % settings.metrics_every == 0
        with self.dist.agreement():  # the other ranks wait here while rank 0 writes
            if self.dist.is_writer:
                if measure_now and self.on_snapshot is not None:
                    line.update(self.measure())
                if self.stager is not None:
                    self.stager.append_stats(line)
                else:
                    snapshot.append_stats(self.run_dir.path, line)
                self.say(_format_line(line))
                if snapshot_now:
                    self.write_snapshot(stop_reason, rng_at_tick_end)
                    self.last_snapshot_at = time.time()
                elif self.stager is not None:
                    self.stager.retry()
        if self.on_tick is not None:
            self.on_tick(line)
        if complete:
            self.tick_sums, self.tick_counts = {}, {}

    def measure(self) -> Dict[str, Any]:
        """on_snapshot's keys for the stats line, without touching the RNG states the training reads."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            result = self.on_snapshot(self.G_ema, self.images, self.labels, self.device)
        return {key: (float(value) if isinstance(value, (int, float, np.floating)) else value)
                for key, value in dict(result).items()}

    def write_snapshot(self, stop_reason: Optional[str], rng_state: Dict[str, Any]) -> None:
        """The fakes grid, the generator file and the full state of the current tick; then retention."""
        kimg = self.progress.cur_nimg / 1000
        label = self.settings.label
        folder = self.stager.local if self.stager is not None else self.run_dir  # staged: local disk first
        snapshot.save_fakes_grid(self.G_ema, self.settings.seed, folder.fakes(kimg))
        meta = dict(kimg=kimg, run=self.run_dir.name, label=label,
                    class_names=CLASS_NAMES if label == "both" else [label])
        from mura_aug.gan.network_file import save_network_file

        save_network_file(folder.network(kimg), self.G_ema, **meta)
        state = {
            "G_kwargs": self.G_kwargs, "D_kwargs": self.D_kwargs,
            **{key: _cpu_state(module) for key, module in self.networks.items()},
            "G_opt": self.G_opt.state_dict(), "D_opt": self.D_opt.state_dict(),
            "augment_p": float(self.augment_pipe.p.item()) if self.augment_pipe is not None else None,
            "ada": self.ada.state_dict() if self.ada is not None else None,
            "loss": self.loss.state_dict(), "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "data": self.sampler.state_dict(), "progress": self.progress.to_state(), "rng": rng_state,
            "partial_tick": self.partial_tick,
            "config": self.config.to_dict(), "options": self.stored_options(),
            **meta, "resolution": int(self.G_kwargs["img_resolution"]), "stop_reason": stop_reason,
        }
        try:
            snapshot.save_state(folder.state(kimg), state)
        except UserError as exc:
            previous = [s for s in snapshot.list_snapshots(self.run_dir.path)
                        if s.state_path is not None and s.kimg < kimg]
            kept = f"the last complete state is {previous[-1].state_path.name}" if previous else \
                "no earlier state exists"
            raise UserError(f"Training stopped at {kimg:g} kimg: the snapshot could not be written. "
                            f"{exc.problem} ({kept}.)", exc.fix) from exc
        state_size = folder.state(kimg).stat().st_size
        if self.stager is not None:
            self.log(f"snapshot {kimg_tag(kimg)} kimg: state {snapshot.human_bytes(state_size)}, "
                     f"{self.stager.staged(kimg)}")
            return
        deleted = snapshot.apply_retention(self.run_dir.path, self.settings.keep, self.settings.keep_networks_every)
        self.log(f"snapshot {kimg_tag(kimg)} kimg: state {snapshot.human_bytes(state_size)}"
                 f"{f', {len(deleted)} old file(s) removed' if deleted else ''}; run folder "
                 f"{snapshot.human_bytes(snapshot.folder_bytes(self.run_dir.path))}, "
                 f"{snapshot.human_bytes(free_bytes(self.run_dir.path))} free")


# =====================================================================================================
# Small helpers
# =====================================================================================================

class _CompiledGenerator:
    """G as the loss sees it under --compile: `mapping` and `synthesis` compiled, every other attribute G's."""

    def __init__(self, G):
        self.G = G
        self.mapping = torch.compile(G.mapping)
        self.synthesis = torch.compile(G.synthesis)

    def __getattr__(self, name):  # only for names not set above
        return getattr(self.G, name)


class _CompiledMainPhases:
    """A loss that runs G main and D main with compiled networks (`main`) and every phase that differentiates
    twice (the regularisers) with the eager loss, which also holds pl_mean and is what a state saves."""

    MAIN = ("Gmain", "Dmain")

    def __init__(self, main, eager):
        self.main, self.eager = main, eager

    def accumulate_gradients(self, phase, **kwargs):
        return (self.main if phase in self.MAIN else self.eager).accumulate_gradients(phase=phase, **kwargs)

    @property
    def pl_mean(self):
        return self.eager.pl_mean

    @pl_mean.setter
    def pl_mean(self, value):
        self.eager.pl_mean = value

    def __getattr__(self, name):  # pl_weight, state_dict, load_state_dict, ...
        return getattr(self.eager, name)


def any_non_finite(tensors: List[torch.Tensor]) -> bool:
    """Whether any of these float tensors (all on one device) holds a NaN or an infinity. One fused kernel (the
    grad scaler's check, with a scale of exactly 1, which leaves finite values as they are): 0.06 ms for 60
    gradient tensors on a CPU core, where per-tensor norms and a stack took 1.1 ms, twice per training step.
    torch builds without that kernel for this device get the per-tensor check."""
    device = tensors[0].device
    found = torch.zeros(1, device=device)
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, torch.ones(1, device=device))
    except (RuntimeError, NotImplementedError):
        return not bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, float("inf")))).all())
    return bool(found)


def _adam(params, kwargs: dict) -> torch.optim.Optimizer:
    """Adam with the config's arguments (a JSON round trip turns betas into a list of maybe-int numbers) and
    the fused kernel where this torch has it for the parameters' device (CPU: torch >= 2.4): on a CPU the step
    of auto-32 drops from ~0.12 s to ~0.03 s (bench/results/networks_cpu.md)."""
    params = list(params)
    kwargs = dict(lr=float(kwargs["lr"]), betas=tuple(float(b) for b in kwargs["betas"]), eps=float(kwargs["eps"]))
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without the fused kernel
        return torch.optim.Adam(params, **kwargs)


def _memory_stats(device: torch.device) -> Dict[str, float]:
    stats = {}
    try:
        import resource  # not on Windows

        stats["cpu_mem_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)  # peak, KB
    except (ImportError, OSError):
        pass
    if device.type == "cuda":
        stats["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
    return stats


def _cpu_state(module) -> Dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def _format_line(line: Dict[str, Any]) -> str:
    parts = [f"tick {line['tick']:<5d}", f"kimg {line['kimg']:<9.3f}"]
    for key in ("loss_G", "loss_D", "loss_r1", "pl_penalty", "augment_p", "r_t", "sec_per_kimg"):
        if key in line and isinstance(line[key], (int, float)):
            parts.append(f"{key} {line[key]:.4g}")
    for key, value in line.items():  # a measured snapshot's FID: fid_offline or fid_inception (gan.measure)
        if key.startswith("fid_") and isinstance(value, (int, float)):
            parts.append(f"{key} {value:.4g}")
    return "  ".join(parts)
