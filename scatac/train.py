"""The training loop every autoencoder uses: Adam over shuffled sparse mini-batches, then encoding.

A Trainer says where and how a model is trained; compare.py and bench/scale.py pass their own
(progress bars that vanish, a limit on batches, the timing of each call) instead of changing
module state.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .batches import Batch, TrainData, draw_neighbors, iterate_batches
from .errors import TrainingFailed
from .runtime import keep_freed_memory, select_device


REPORT_CELLS = 128  # cells on which a sampled decoder's run reports the full loss each epoch
REPORT_BATCH = 64  # a (64, n_peaks) block at a time
VALIDATION_MAX_CELLS = 2048  # early stopping's loss, with every peak's logit, on at most this many held-out cells
MIN_IMPROVEMENT = 1e-4  # relative: a held-out loss this much below the best so far counts as better


def early_stopping(options: dict) -> dict:
    """Trainer.train's early-stopping arguments from a method's options (none when it is off)."""
    if not options.get("early_stopping"):
        return {}
    return {"patience": options["patience"], "validation_fraction": options["validation_fraction"]}


def held_out_cells(n_cells: int, fraction: float, seed: int) -> np.ndarray:
    """The cells early stopping keeps out of training (sorted), the same for a seed whatever the model."""
    n_held = min(max(1, round(fraction * n_cells)), n_cells - 1)
    return np.sort(np.random.default_rng([seed, 7]).permutation(n_cells)[:n_held])


def auto_batch_size(n_cells: int, epochs: int, sampled: bool) -> int:
    """batch_size 'auto': 64; with the sampled decoder, a power of two from 64 to 1024 that keeps about
    8 steps an epoch and at least MIN_STEPS steps in the training phase.

    A step's fixed cost (Adam over the two n_peaks x 512 matrices, their zeroed gradients) is paid
    per batch, so fewer, larger batches amortize it. With the sampled decoder ARI held down to about
    8 steps an epoch while a phase kept some 400 steps (3 seeds: AE on hemato4k 0.388 at 512 cells a
    batch against 0.379 at 64; its 2,000-cell subset 0.370 at 256 but 0.350 at 512, 4 steps an
    epoch; StackedAE's 5-epoch pretraining at 512, 40 steps a layer, lost 0.09). The full decoder
    was tuned at 64.
    """
    if not sampled:
        return 64
    per_epoch = 2 ** round(np.log2(max(n_cells, 1) / 8))
    per_phase = 2 ** np.floor(np.log2(max(n_cells * epochs / MIN_STEPS, 1)))
    return int(min(1024, max(64, min(per_epoch, per_phase))))


MIN_STEPS = 400


@dataclass
class Fitted:
    """What a method's fit returns: features (n_cells, latent_dim) float32 in cell order, the trained
    model, its loss per epoch (one dict per epoch: phase, epoch, loss and its terms), and what else
    the fit wants recorded (e.g. the VAE's prior)."""

    features: np.ndarray
    model: object = None
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def make_adam(params, lr: float, weight_decay: float, device):
    """Adam with torch's fused kernel where the device has one: on CPU it cut the step over an
    AE's two 100,000 x 512 matrices from 0.62 s to 0.09 s (bench/scale.py, issue 7)."""
    import torch

    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@dataclass
class Trainer:
    """Where and how models are trained.

    device: a torch.device (None: cuda, then mps, then cpu). progress: show a bar per training
    phase; leave_progress False makes each bar vanish when done (runs under another bar).
    max_batches: train only the first N mini-batches of each epoch (bench/scale.py's time per
    batch). calls: one record per train() call: its phase, epochs, seconds, and the seconds and
    number of the batches after the first of each epoch (the first pays one-off costs).
    """

    device: object = None
    progress: bool = True
    leave_progress: bool = True
    max_batches: int | None = None
    calls: list = field(default_factory=list)

    def __post_init__(self):
        if self.device is None:
            self.device = select_device("auto")

    def train(self, model, data: TrainData, epochs: int, batch_size: int, lr: float, seed: int, *,
              loss_fn: Callable | None = None, parameters=None, phase: str = "train", weight_decay: float = 0.0,
              epoch_callback: Callable | None = None, patience: int | None = None, validation_fraction: float = 0.1,
              min_epochs: int = 0, neighbor_weight: float = 0.0) -> list:
        """Adam over shuffled mini-batches for `epochs` passes; returns one record per epoch.

        `loss_fn(model, batch, epoch)` returns a dict of scalar tensors whose "loss" entry is
        minimized (the others are logged); default `model.loss(batch, epoch=epoch)`. `parameters`
        limits what is trained (default: all of the model's). A record holds phase, epoch and the
        batch-size-weighted mean of each term.

        Early stopping, with `patience`: `validation_fraction` of the cells (held_out_cells) are left out of
        training; after each epoch their loss (every peak's logit, the model in eval mode, on at most
        VALIDATION_MAX_CELLS of them) is the record's "validation_loss", and training stops once it has not
        improved for `patience` epochs, not before `min_epochs` (the VAE's KL warm-up, when the loss still
        changes meaning). The weights are those of the last epoch, as Keras's and Lightning's EarlyStopping
        leave them by default.

        Neighbour term, with `neighbor_weight` > 0 and `data.neighbors`: each cell of a batch is paired with one
        of its reference neighbours (batches.draw_neighbors); the features of both (`model.embed`, the
        neighbour's without a gradient: a fixed target) give the record's "neighbor" ratio
        (nn.neighbor_ratio), and the loss minimized becomes loss + neighbor_weight * ratio * loss, the
        last factor held fixed in the step: the term is weighed against the reconstruction's own size,
        which differs a hundredfold between data sets, so that one weight holds on all.
        """
        import torch
        import torch.profiler
        from tqdm.auto import tqdm

        from .nn import neighbor_ratio, sampled_outputs

        device = self.device
        if batch_size == "auto":
            batch_size = auto_batch_size(data.n_cells, epochs, bool(sampled_outputs(model)))
        if device.type == "cpu":
            keep_freed_memory()
        loss_fn = loss_fn or (lambda m, b, e: m.loss(b, epoch=e))
        params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
        optimizer = make_adam(params, lr, weight_decay, device)
        rng = np.random.default_rng(seed)
        # a sampled decoder's loss is an estimate: the full one is reported on a fixed sample of cells instead
        report_rows = np.sort(np.random.default_rng(seed).permutation(data.n_cells)[:REPORT_CELLS]) \
            if sampled_outputs(model) else None
        training_rows, validation_rows = None, None
        if patience is not None:
            held = held_out_cells(data.n_cells, validation_fraction, seed)
            training_rows = np.setdiff1d(np.arange(data.n_cells), held)
            validation_rows = held[:: max(1, math.ceil(len(held) / VALIDATION_MAX_CELLS))]
            if report_rows is not None:
                report_rows = np.intersect1d(report_rows, training_rows)
        n_training = data.n_cells if training_rows is None else len(training_rows)
        pair_neighbors = neighbor_weight > 0 and data.neighbors is not None and data.neighbors.shape[1] > 0
        allowed = None
        if pair_neighbors and training_rows is not None:
            allowed = np.zeros(data.n_cells, dtype=bool)
            allowed[training_rows] = True
        best, waited = math.inf, 0
        history = []
        call = {"phase": phase, "epochs": epochs, "batch_size": batch_size, "n_cells": n_training,
                "batches_per_epoch": math.ceil(n_training / batch_size), "steady_batches": 0, "steady_seconds": 0.0,
                "epochs_trained": 0}
        started = time.perf_counter()
        bar = tqdm(range(1, epochs + 1), desc=phase, unit="epoch", disable=not self.progress, file=sys.stderr,
                   leave=self.leave_progress)
        model.to(device)
        for epoch in bar:
            model.train()
            sums, seen = {}, 0
            after_first, steady = None, 0
            for index, rows in enumerate(iterate_batches(n_training, batch_size, rng)):
                if self.max_batches is not None and index >= self.max_batches:
                    break
                if training_rows is not None:
                    rows = training_rows[rows]
                if index == 1:
                    after_first = time.perf_counter()
                steady += index >= 1
                with torch.profiler.record_function("assemble_batch"):  # named in bench/scale.py --profile
                    batch = Batch(data, rows, device)
                terms = loss_fn(model, batch, epoch)
                loss = terms["loss"]
                if pair_neighbors and len(rows) > 1:
                    neighbor_batch = Batch(data, draw_neighbors(rows, data.neighbors, rng, allowed), device)
                    with torch.no_grad():  # a fixed target, as BYOL's: its backward pass would cost a third more
                        neighbor_code = model.embed(neighbor_batch)
                    terms = {**terms, "neighbor": neighbor_ratio(model.embed(batch), neighbor_code)}
                    loss = loss + neighbor_weight * loss.detach() * terms["neighbor"]
                # a check reads the loss back to the host: every step on CPU, where that is free; once
                # an epoch on a GPU, whose steps then queue up without waiting (below)
                if device.type != "cuda" and not torch.isfinite(loss):
                    raise TrainingFailed(f"{phase}: loss became {loss.item()} at epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().double() * len(rows)
                seen += len(rows)
            if after_first is not None:
                call["steady_batches"] += steady
                call["steady_seconds"] += time.perf_counter() - after_first
            record = {"phase": phase, "epoch": epoch, **{k: float(v) / max(seen, 1) for k, v in sums.items()}}
            if not np.isfinite(record.get("loss", 0.0)):
                raise TrainingFailed(f"{phase}: loss became {record['loss']} in epoch {epoch}")
            if report_rows is not None:
                record = {"phase": phase, "epoch": epoch, **self.full_loss(model, data, report_rows, loss_fn, epoch),
                          "sampled_loss": record["loss"]}
            if validation_rows is not None:
                model.eval()
                record["validation_loss"] = self.full_loss(model, data, validation_rows, loss_fn, epoch)["loss"]
                if not math.isfinite(best) or record["validation_loss"] < best - MIN_IMPROVEMENT * abs(best):
                    best, waited = record["validation_loss"], 0
                else:
                    waited += 1
            history.append(record)
            call["epochs_trained"] = epoch
            bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")
            if epoch_callback is not None:
                epoch_callback(epoch, record)
            if validation_rows is not None and waited >= patience and epoch >= min_epochs:
                call["stopped_early"] = True
                break
        bar.close()
        call["seconds"] = time.perf_counter() - started
        self.calls.append(call)
        return history

    def full_loss(self, model, data: TrainData, rows: np.ndarray, loss_fn: Callable, epoch: int) -> dict:
        """The loss terms with every peak's logit, on `rows`, in the model's current mode (training: as the full
        decoder's records; eval: early stopping's held-out loss), without a gradient and without touching the
        random streams of training."""
        import torch

        from .nn import full_decoder

        sums = {}
        with torch.no_grad(), full_decoder(model), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for start in range(0, len(rows), REPORT_BATCH):
                chunk = rows[start : start + REPORT_BATCH]
                for key, value in loss_fn(model, Batch(data, chunk, self.device), epoch).items():
                    sums[key] = sums.get(key, 0.0) + float(value) * len(chunk)
        return {k: v / len(rows) for k, v in sums.items()}

    def encode(self, model, data: TrainData, batch_size: int = 1024) -> np.ndarray:
        """`model.embed(batch)` over every cell in order: (n_cells, latent_dim) float32."""
        import torch

        model.eval()
        chunks = []
        with torch.no_grad():
            for rows in iterate_batches(data.n_cells, batch_size, None):
                batch = Batch(data, rows, self.device)
                chunks.append(model.embed(batch).detach().float().cpu().numpy())
        return np.concatenate(chunks, axis=0).astype(np.float32)
