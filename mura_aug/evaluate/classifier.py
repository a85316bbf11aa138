"""Stage 06's classifier: the models, one training run (arm and seed) with its checkpoints, and predictions.

`train_run` trains one run in `results/evaluation/<BODY>/<experiment>/runs/<run>/`, continuing from its
checkpoint.pt (written after every epoch), and writes predictions.csv and, last, result.json (the run is
finished). Both files store the settings that shaped the run (`EvalSettings.fingerprint`); a run is continued
only with the same ones.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from mura_aug.devices import (accelerator_memory_text, free_accelerator_memory, grad_scaler, is_out_of_memory,
                              out_of_memory_line)
from mura_aug.errors import UserError
from mura_aug.evaluate import study_metrics
from mura_aug.evaluate.data import ImageCache, assert_no_synthetic, check_no_patient_overlap, concat, is_real, \
    make_dataset
from mura_aug.evaluate.settings import EvalSettings
from mura_aug.workspace import EvaluationRun, atomic_path, atomic_write_csv, atomic_write_json

CHECKPOINT_FORMAT = "mura_aug.classifier_checkpoint"


# --- models ---------------------------------------------------------------------------------------

def build_model(arch: str, pretrained: bool, progress: bool = True):
    """The classifier with a single-logit head. ImageNet weights are downloaded once into the torch hub cache."""
    import torch
    from torchvision import models

    if arch == "tiny":
        if pretrained:
            raise UserError("ARCH='tiny' has no pretrained weights.", "Pass PRETRAINED=False / --no-pretrained.")
        return TinyCNN()
    constructor, weights_enum, head = {
        "densenet169": (models.densenet169, models.DenseNet169_Weights, "classifier"),
        "resnet50": (models.resnet50, models.ResNet50_Weights, "fc"),
    }[arch]
    weights = weights_enum.IMAGENET1K_V1 if pretrained else None
    try:
        model = constructor(weights=weights, progress=progress)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a truncated file a RuntimeError
        raise UserError(f"Could not load the ImageNet weights of {arch} ({type(exc).__name__}: {exc}).",
                        f"Connect to the internet once (Colab downloads them into {torch.hub.get_dir()}/checkpoints"
                        "), or pass pretrained=False / --no-pretrained to train from scratch.") from exc
    old_head = getattr(model, head)
    setattr(model, head, torch.nn.Linear(old_head.in_features, 1))
    return model


def _tiny_cnn_class():
    import torch
    from torch import nn

    class _TinyCNN(nn.Module):
        """Four strided conv blocks and a linear head on average+max pooled features: fast on a laptop CPU."""

        def __init__(self, width: int = 16):
            super().__init__()
            channels = [3, width, 2 * width, 4 * width, 4 * width]
            layers = []
            for c_in, c_out in zip(channels[:-1], channels[1:]):
                layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                           nn.ReLU(inplace=True)]
            self.features = nn.Sequential(*layers)
            # Max pooling lets a small bright object (metal, a fracture line) decide, whatever its size.
            self.head = nn.Linear(2 * channels[-1], 1)

        def forward(self, images):
            features = self.features(images)
            pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
            return self.head(pooled)

    return _TinyCNN


def TinyCNN(width: int = 16):
    """A small CNN (about 60 k parameters) for demos on a CPU; no pretrained weights."""
    return _tiny_cnn_class()(width)


# --- one run --------------------------------------------------------------------------------------

class PassSize:
    """Images per forward pass of one run: the batch, halved each time the GPU runs out of memory (training
    then accumulates the gradients of the smaller passes to the same batch; predicting just takes smaller
    bites). Says so once per halving; a UserError naming what would fit once a single image does not."""

    def __init__(self, settings: EvalSettings, device, run_name: str):
        self.size, self.settings, self.device, self.run_name = int(settings.batch_size), settings, device, run_name

    def halve(self, where: str, error: str) -> None:
        from tqdm.auto import tqdm

        settings, memory = self.settings, accelerator_memory_text(self.device)
        if self.size == 1:
            smaller = [f"--image-size {settings.image_size // 2} (IMAGE_SIZE = {settings.image_size // 2})"] \
                if settings.image_size // 2 >= 32 else []
            smaller += {"densenet169": ["--arch resnet50"], "resnet50": ["--arch tiny"]}.get(settings.arch, [])
            raise UserError(f"{settings.arch} at {settings.image_size} px does not fit into {memory}, not even one "
                            f"image per pass ({where} of {self.run_name}: {error}).",
                            f"Rerun with {' or '.join(smaller + ['a GPU with more memory'])} (a new experiment: "
                            "these settings shape the results); close other notebooks that hold GPU memory.")
        old = self.size
        self.size = max(old // 2, 1)
        tqdm.write(f"out of GPU memory while {where} {self.run_name} with {old} images per pass: continuing with "
                   f"{self.size} per pass from the same batch (training accumulates the gradients to the same "
                   f"batch of {settings.batch_size}; batch-norm statistics then come from the smaller passes)")


def _loader(dataset, batch_size, shuffle, workers, seed, device):
    """Training loaders (shuffle=True) drop a last partial batch: batch norm cannot train on a single image."""
    import torch

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       generator=generator, pin_memory=device.type == "cuda",
                                       drop_last=shuffle and len(dataset) > batch_size)


def predict(model, dataset, device, batch_size: int, workers: int, progress: bool = False,
            description: str = "predicting", passes: Optional[PassSize] = None) -> np.ndarray:
    """Probabilities (sigmoid of the logit), one per image, in the dataset's order. `passes`: the run's pass
    size, halved when the GPU runs out of memory (None: whole batches, out of memory is an error)."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    outputs = []
    use_amp = device.type == "cuda"
    with torch.no_grad():
        batches = _loader(dataset, batch_size, False, workers, 0, device)
        for images, _ in tqdm(batches, desc=description, unit="batch", leave=False, disable=not progress):
            images = images.to(device, non_blocking=True)
            while True:
                failed = None
                try:
                    parts = []
                    for part in images.split(passes.size if passes is not None else len(images)):
                        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                            logits = model(part)
                        parts.append(torch.sigmoid(logits.float()).squeeze(1).cpu().numpy())
                    break
                except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                    if passes is None or not is_out_of_memory(exc):
                        raise
                    failed = out_of_memory_line(exc)
                parts = logits = None  # outside the except clause: the failed pass' tensors can be freed
                free_accelerator_memory(device)
                passes.halve(description, failed)
            outputs.extend(parts)
    return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)


def _train_step(model, optimizer, scaler, loss_fn, images, labels, pass_size: int, use_amp: bool, run_dir: Path,
                epoch: int) -> float:
    """One optimizer step on one batch in passes of `pass_size` images whose gradients accumulate: each pass'
    mean loss weighted by its share of the batch, so the gradient is the batch mean's. Returns the batch's
    mean loss."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for part, part_labels in zip(images.split(pass_size), labels.split(pass_size)):
        with torch.autocast(device_type=images.device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(part).squeeze(1)
        loss = loss_fn(logits.float(), part_labels)
        if not torch.isfinite(loss):
            raise UserError(f"The training loss of {run_dir.name} became {loss.item()} at epoch {epoch + 1}.",
                            f"Move {run_dir} away (its last good epoch stays in checkpoint.pt) and rerun with "
                            "a lower learning rate (LEARNING_RATE / --learning-rate, e.g. 1e-5).")
        share = len(part_labels) / len(labels)
        scaler.scale(loss * share if share != 1 else loss).backward()
        total += loss.item() * share
    scaler.step(optimizer)
    scaler.update()
    return total


def _balanced_loss(labels: np.ndarray, device):
    """BCE whose positive term is weighted by negatives/positives, so both classes count equally."""
    import torch

    positives = float(labels.sum())
    negatives = float(len(labels) - positives)
    if positives == 0 or negatives == 0:
        raise UserError("A training or validation split holds only one class.",
                        "Use more patients (the full MURA body part).")
    return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([negatives / positives], device=device))


def train_run(run_dir: Path, fit, val, evaluation, settings: EvalSettings, seed: int, cache: ImageCache,
              device, progress: bool = True, synthetic_requested: int = 0) -> Dict[str, object]:
    """Train one (arm, seed), continuing from its checkpoint if there is one; write predictions and result.json.

    synthetic_requested: how many synthetic rows SYNTH_RATIO asked for (fit holds fewer when fewer exist).
    """
    import torch
    from tqdm.auto import tqdm

    assert_no_synthetic(val, f"the internal validation split of {run_dir.name}")
    assert_no_synthetic(evaluation, f"the evaluation of {run_dir.name}")
    check_no_patient_overlap(fit, val, "training", "internal validation")
    check_no_patient_overlap(fit, evaluation, "training", "evaluation (MURA valid)")
    started = time.time()
    torch.manual_seed(seed)
    model = build_model(settings.arch, settings.pretrained, progress).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=settings.lr_patience)
    use_amp = device.type == "cuda"
    scaler = grad_scaler(device, enabled=use_amp)
    passes = PassSize(settings, device, run_dir.name)  # images per forward pass: halves on out of GPU memory
    train_loss_fn = _balanced_loss(fit["label"].to_numpy(), device)
    val_loss_fn = _balanced_loss(val["label"].to_numpy(), device)
    train_set = make_dataset(cache, fit, True, settings.rotation_deg)
    val_set = make_dataset(cache, val, False, settings.rotation_deg)

    checkpoint_path = EvaluationRun(run_dir).checkpoint
    state = {"epoch": 0, "history": [], "best_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
             "best_model": None, "stopped": None, "train_seconds": 0.0}
    if checkpoint_path.is_file():
        saved = _load_checkpoint(checkpoint_path, settings)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved["scaler"] and scaler.is_enabled():  # empty when saved on a CPU run, where AMP is off
            scaler.load_state_dict(saved["scaler"])
        state = saved["state"]
        state["stopped"] = None if state["stopped"] == "epochs" else state["stopped"]

    epochs = tqdm(range(state["epoch"], settings.epochs), desc=run_dir.name, unit="epoch",
                  initial=state["epoch"], total=settings.epochs, disable=not progress)
    for epoch in epochs:
        if state["stopped"] == "early":
            break
        epoch_started = time.time()
        # Seeding per epoch makes a resumed run draw the same batches and augmentations as an uncut one.
        torch.manual_seed(seed * 1000 + epoch)
        model.train()
        total_loss, seen = 0.0, 0
        batches = _loader(train_set, settings.batch_size, True, settings.workers, seed * 1000 + epoch, device)
        for images, labels in tqdm(batches, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                                   disable=not progress):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            while True:  # out of GPU memory: the same batch again in passes half as large
                failed = None
                try:
                    loss = _train_step(model, optimizer, scaler, train_loss_fn, images, labels, passes.size,
                                       use_amp, run_dir, epoch)
                    break
                except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                    if not is_out_of_memory(exc):
                        raise
                    failed = out_of_memory_line(exc)
                optimizer.zero_grad(set_to_none=True)  # outside the except clause: the failed pass can be freed
                free_accelerator_memory(device)
                passes.halve("training", failed)
            total_loss += loss * len(labels)
            seen += len(labels)
        val_prob = predict(model, val_set, device, settings.batch_size, settings.workers, passes=passes)
        val_loss = _probability_loss(val_loss_fn, val_prob, val["label"].to_numpy(), device)
        val_study = study_metrics.aggregate_studies(val.assign(probability=val_prob))
        val_metrics = study_metrics.binary_metrics(val_study["label"], val_study["probability"], 0.5)
        scheduler.step(val_loss)
        state["history"].append({
            "epoch": epoch + 1, "train_loss": total_loss / max(seen, 1), "val_loss": val_loss,
            "val_study_auc": val_metrics["auc"], "val_study_kappa": val_metrics["kappa"],
            "learning_rate": optimizer.param_groups[0]["lr"], "seconds": time.time() - epoch_started})
        if val_loss < state["best_loss"]:
            state.update(best_loss=val_loss, best_epoch=epoch + 1, bad_epochs=0,
                         best_model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["train_seconds"] += time.time() - epoch_started
        if state["bad_epochs"] >= settings.early_stop_patience:
            state["stopped"] = "early"
        elif state["epoch"] >= settings.epochs:
            state["stopped"] = "epochs"
        epochs.set_postfix(val_loss=f"{val_loss:.3f}", val_auc=f"{val_metrics['auc']:.3f}")
        _save_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, state, settings)
    epochs.close()

    model.load_state_dict(state["best_model"])
    eval_set = make_dataset(cache, evaluation, False, settings.rotation_deg)
    eval_prob = predict(model, eval_set, device, settings.batch_size, settings.workers, progress,
                        "scoring MURA valid", passes=passes)
    val_prob = predict(model, val_set, device, settings.batch_size, settings.workers, passes=passes)
    val_study = study_metrics.aggregate_studies(val.assign(probability=val_prob))
    thresholds = {"study": study_metrics.choose_threshold(val_study["label"], val_study["probability"]),
                  "image": study_metrics.choose_threshold(val["label"], val_prob)}
    predictions = concat(_prediction_frame(evaluation, eval_prob, "evaluation"),
                          _prediction_frame(val, val_prob, "internal_validation"))
    atomic_write_csv(EvaluationRun(run_dir).predictions, predictions)
    result = {
        "run": run_dir.name, "seed": seed, "settings": settings.fingerprint(),
        "epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "stopped": state["stopped"],
        "history": state["history"], "thresholds": thresholds,
        "n_train_real": int((is_real(fit)).sum()), "n_train_synthetic": int((~is_real(fit)).sum()),
        "n_synthetic_requested": int(synthetic_requested),
        "n_train_positive": int(fit["label"].sum()), "n_internal_val": len(val), "n_evaluation": len(evaluation),
        "internal_val_patients": sorted(val["patient"].astype(str).unique().tolist()),
        "train_seconds": state["train_seconds"], "seconds_this_session": time.time() - started,
        "device": str(device),
    }
    atomic_write_json(EvaluationRun(run_dir).result, result)  # last: marks the run as finished
    return result


def _prediction_frame(frame, probabilities, part: str):
    import pandas as pd

    return pd.DataFrame({"part": part, "path": frame["path"].to_numpy(), "patient": frame["patient"].to_numpy(),
                         "study_id": frame["study_id"].to_numpy(), "label": frame["label"].to_numpy(),
                         "probability": np.asarray(probabilities, dtype=float)})


def _probability_loss(loss_fn, probabilities, labels, device) -> float:
    import torch

    clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    logits = torch.tensor(np.log(clipped / (1 - clipped)), dtype=torch.float32, device=device)
    return float(loss_fn(logits, torch.tensor(labels, dtype=torch.float32, device=device)).item())


def _save_checkpoint(path: Path, model, optimizer, scheduler, scaler, state, settings: EvalSettings) -> None:
    import torch

    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "settings": settings.fingerprint(),
               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "state": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path, settings: EvalSettings) -> dict:
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated by a disconnect before atomic writes, or not ours
        raise UserError(f"The checkpoint {path} cannot be read ({type(exc).__name__}).",
                        "Move that run folder away (it is never deleted for you) and rerun to train it again.") \
            from exc
    check_same_settings(path.parent, saved.get("settings", {}), settings)
    return saved


def check_same_settings(run_dir: Path, stored: dict, settings: EvalSettings) -> None:
    wanted = settings.fingerprint()
    changed = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
    if changed:
        listing = ", ".join(f"{k}: stored {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise UserError(f"The run {run_dir} was made with other settings ({listing}).",
                        "Rerun with the stored settings to continue it, or move that folder away to start over "
                        "(results are never deleted for you).")
