"""The training loop every autoencoder uses: Adam over shuffled sparse mini-batches, then encoding.

A Trainer says where and how a model is trained; compare.py and bench/scale.py pass their own
(progress bars that vanish, a limit on batches, the timing of each call) instead of changing
module state.

Trainer.train is a short loop over the steps a BatchSource (batches.InMemoryBatches by default) yields; what
happens around the steps lives in Callbacks, in the style of Lightning's hooks: FullLossReport (a sampled
decoder's records), EarlyStopping, Timing (Trainer.calls), Progress (the bar) and EpochFunction.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .batches import Batch, BatchSource, InMemoryBatches, TrainData, iterate_batches
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
class TrainState:
    """One train() call as its callbacks see it.

    batches: the BatchSource the loop draws from; epoch: the epoch under way (1-based, 0 before the first);
    history: the records so far, one dict per epoch (the last one is the record on_epoch_end receives);
    stopped_early: a callback's on_epoch_end asked the loop to stop (which may be at the last epoch).
    """

    trainer: "Trainer"
    model: object
    data: TrainData
    loss_fn: Callable
    phase: str
    epochs: int
    batch_size: int
    batches: BatchSource
    epoch: int = 0
    history: list = field(default_factory=list)
    stopped_early: bool = False


class Callback:
    """Hooks of the training loop, in the style of Lightning's: each does nothing unless overridden.

    Per train() call: on_train_start, then per epoch on_epoch_start, on_batch_end after each optimizer step,
    on_batches_end after the epoch's last step (before its record exists), on_epoch_end, and on_train_end
    once the loop is done (not after an exception). A callback may be passed to several calls (the
    StackedAE's phases): on_train_start is where it starts afresh.
    """

    def on_train_start(self, state: TrainState):
        pass

    def on_epoch_start(self, state: TrainState):
        pass

    def on_batch_end(self, state: TrainState, index: int, batch: Batch):
        pass

    def on_batches_end(self, state: TrainState):
        pass

    def on_epoch_end(self, state: TrainState, record: dict) -> bool | None:
        """May change `record` in place (it is already in state.history); True stops training after this
        epoch, once every callback has seen it."""

    def on_train_end(self, state: TrainState):
        pass


class FullLossReport(Callback):
    """A sampled decoder's loss is an estimate: each record's terms become the full loss on REPORT_CELLS fixed
    cells (the same for a seed, within `training_rows` when some are held out), the estimate kept as
    "sampled_loss". Runs in training mode, as the full decoder's records are taken."""

    def __init__(self, n_cells: int, seed: int, training_rows: np.ndarray | None = None):
        self.rows = np.sort(np.random.default_rng(seed).permutation(n_cells)[:REPORT_CELLS])
        if training_rows is not None:
            self.rows = np.intersect1d(self.rows, training_rows)

    def on_epoch_end(self, state, record):
        full = state.trainer.full_loss(state.model, state.data, self.rows, state.loss_fn, state.epoch)
        sampled_loss = record["loss"]
        # the estimate's own terms (the neighbour ratio among them) give way to the full loss's
        record.clear()
        record.update({"phase": state.phase, "epoch": state.epoch, **full, "sampled_loss": sampled_loss})


class EarlyStopping(Callback):
    """The held-out cells' loss (every peak's logit, the model in eval mode, on at most VALIDATION_MAX_CELLS
    of `held_out`, (n_held,) sorted cell indices) is each record's "validation_loss"; training stops once
    it has not improved by MIN_IMPROVEMENT of itself for `patience` epochs, not before `min_epochs` (the
    VAE's KL warm-up, while the loss still changes meaning). The weights stay those of the last epoch,
    as Keras's and Lightning's EarlyStopping leave them by default."""

    def __init__(self, held_out: np.ndarray, patience: int, min_epochs: int = 0):
        self.rows = held_out[:: max(1, math.ceil(len(held_out) / VALIDATION_MAX_CELLS))]
        self.patience, self.min_epochs = patience, min_epochs

    def on_train_start(self, state):
        self.best, self.waited = math.inf, 0

    def on_epoch_end(self, state, record):
        state.model.eval()
        record["validation_loss"] = state.trainer.full_loss(state.model, state.data, self.rows, state.loss_fn,
                                                            state.epoch)["loss"]
        if not math.isfinite(self.best) or record["validation_loss"] < self.best - MIN_IMPROVEMENT * abs(self.best):
            self.best, self.waited = record["validation_loss"], 0
        else:
            self.waited += 1
        return self.waited >= self.patience and state.epoch >= self.min_epochs


class Timing(Callback):
    """Appends one record per train() call to `calls` (Trainer.calls: what bench/scale.py and tl read): phase,
    epochs, batch_size, n_cells and batches_per_epoch (of the batch source), epochs_trained, stopped_early
    (only when a callback stopped it), seconds, and the seconds and number of the steps after each epoch's
    first (which pays one-off costs): steady_seconds, steady_batches."""

    def __init__(self, calls: list):
        self.calls = calls

    def on_train_start(self, state):
        self.started = time.perf_counter()
        self.call = {"phase": state.phase, "epochs": state.epochs, "batch_size": state.batch_size,
                     "n_cells": state.batches.n_cells, "batches_per_epoch": state.batches.batches_per_epoch,
                     "steady_batches": 0, "steady_seconds": 0.0, "epochs_trained": 0}

    def on_epoch_start(self, state):
        self.after_first, self.steady = None, 0

    def on_batch_end(self, state, index, batch):
        if index == 0:
            self.after_first = time.perf_counter()
        else:
            self.steady += 1

    def on_batches_end(self, state):
        if self.steady:
            self.call["steady_batches"] += self.steady
            self.call["steady_seconds"] += time.perf_counter() - self.after_first

    def on_epoch_end(self, state, record):
        self.call["epochs_trained"] = state.epoch

    def on_train_end(self, state):
        if state.stopped_early:
            self.call["stopped_early"] = True
        self.call["seconds"] = time.perf_counter() - self.started
        self.calls.append(self.call)


class Progress(Callback):
    """A tqdm bar of epochs per train() call, showing the last record's loss; `leave` False makes it vanish when
    done (a bar under another bar), `enabled` False shows nothing."""

    def __init__(self, enabled: bool = True, leave: bool = True):
        self.enabled, self.leave = enabled, leave

    def on_train_start(self, state):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.epochs, desc=state.phase, unit="epoch", disable=not self.enabled, file=sys.stderr,
                        leave=self.leave)

    def on_epoch_end(self, state, record):
        self.bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}", refresh=False)
        self.bar.update(1)

    def on_train_end(self, state):
        self.bar.close()


class EpochFunction(Callback):
    """`function(epoch, record)` after each epoch: train()'s epoch_callback (the VAE fits its mixture prior
    with it when the KL warm-up ends)."""

    def __init__(self, function: Callable):
        self.function = function

    def on_epoch_end(self, state, record):
        self.function(state.epoch, record)


def training_cells(n_cells: int, validation_fraction: float, seed: int) -> tuple:
    """Early stopping's split of the cells: (training rows, held-out rows), each sorted int64."""
    held_out = held_out_cells(n_cells, validation_fraction, seed)
    return np.setdiff1d(np.arange(n_cells), held_out), held_out


@dataclass
class Trainer:
    """Where and how models are trained.

    device: a torch.device (None: cuda, then mps, then cpu). progress: show a bar per training
    phase; leave_progress False makes each bar vanish when done (runs under another bar).
    max_batches: train only the first N mini-batches of each epoch (bench/scale.py's time per
    batch). calls: one record per train() call (Timing): its phase, epochs, seconds, and the seconds and
    number of the batches after the first of each epoch (the first pays one-off costs).
    callbacks: Callbacks added to every train() call, after the trainer's own.
    """

    device: object = None
    progress: bool = True
    leave_progress: bool = True
    max_batches: int | None = None
    calls: list = field(default_factory=list)
    callbacks: list = field(default_factory=list)

    def __post_init__(self):
        if self.device is None:
            self.device = select_device("auto")

    def batch_source(self, data: TrainData, batch_size: int, seed: int, training_rows: np.ndarray | None,
                     neighbor_weight: float) -> BatchSource:
        """The batches train() draws from unless given its own: shuffled in memory over `training_rows`
        (None: every cell), each cell paired with a reference neighbour when the neighbour term is on.
        A subclass may return a streamed or sharded source instead."""
        return InMemoryBatches(data, batch_size, self.device, seed, training_rows,
                               data.neighbors if neighbor_weight > 0 else None, self.max_batches)

    def train(self, model, data: TrainData, epochs: int, batch_size: int, lr: float, seed: int, *,
              loss_fn: Callable | None = None, parameters=None, phase: str = "train", weight_decay: float = 0.0,
              epoch_callback: Callable | None = None, patience: int | None = None, validation_fraction: float = 0.1,
              min_epochs: int = 0, neighbor_weight: float = 0.0, callbacks: list = (),
              batches: BatchSource | None = None) -> list:
        """Adam over shuffled mini-batches for `epochs` passes; returns one record per epoch.

        `loss_fn(model, batch, epoch)` returns a dict of scalar tensors whose "loss" entry is
        minimized (the others are logged); default `model.loss(batch, epoch=epoch)`. `parameters`
        limits what is trained (default: all of the model's). A record holds phase, epoch and the
        batch-size-weighted mean of each term. `batch_size` "auto": auto_batch_size.

        Early stopping, with `patience`: `validation_fraction` of the cells (held_out_cells) are left out of
        training and watched by EarlyStopping (`min_epochs`). A sampled decoder's records report the full loss
        (FullLossReport). `epoch_callback(epoch, record)` runs after each epoch; `callbacks` (Callback) after
        the trainer's own. `batches` replaces the trainer's batch_source (the held-out split is then its own).

        Neighbour term, with `neighbor_weight` > 0 and `data.neighbors`: each cell of a batch is paired with one
        of its reference neighbours (batches.draw_neighbors); the features of both (`model.embed`, the
        neighbour's without a gradient: a fixed target) give the record's "neighbor" ratio
        (nn.neighbor_ratio), and the loss minimized becomes loss + neighbor_weight * ratio * loss, the
        last factor held fixed in the step: the term is weighed against the reconstruction's own size,
        which differs a hundredfold between data sets, so that one weight holds on all.
        """
        import torch

        from .nn import neighbor_ratio, sampled_outputs

        device = self.device
        if batch_size == "auto":
            batch_size = auto_batch_size(data.n_cells, epochs, bool(sampled_outputs(model)))
        if device.type == "cpu":
            keep_freed_memory()
        loss_fn = loss_fn or (lambda m, b, e: m.loss(b, epoch=e))
        params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
        optimizer = make_adam(params, lr, weight_decay, device)
        training_rows = held_out = None
        if patience is not None:
            training_rows, held_out = training_cells(data.n_cells, validation_fraction, seed)
        if batches is None:
            batches = self.batch_source(data, batch_size, seed, training_rows, neighbor_weight)
        state = TrainState(self, model, data, loss_fn, phase, epochs, batch_size, batches)
        # in this order: the full loss replaces the record's terms before anything reads them
        callbacks = [*([FullLossReport(data.n_cells, seed, training_rows)] if sampled_outputs(model) else []),
                     *([EarlyStopping(held_out, patience, min_epochs)] if patience is not None else []),
                     Timing(self.calls), Progress(self.progress, self.leave_progress),
                     *([EpochFunction(epoch_callback)] if epoch_callback is not None else []),
                     *self.callbacks, *callbacks]
        for callback in callbacks:
            callback.on_train_start(state)
        model.to(device)
        for epoch in range(1, epochs + 1):
            state.epoch = epoch
            model.train()
            for callback in callbacks:
                callback.on_epoch_start(state)
            sums, seen = {}, 0
            for index, (batch, neighbor_batch) in enumerate(batches.epoch(epoch)):
                terms = loss_fn(model, batch, epoch)
                loss = terms["loss"]
                if neighbor_batch is not None:
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
                    sums[key] = sums.get(key, 0.0) + value.detach().double() * len(batch.rows)
                seen += len(batch.rows)
                for callback in callbacks:
                    callback.on_batch_end(state, index, batch)
            for callback in callbacks:
                callback.on_batches_end(state)
            record = {"phase": phase, "epoch": epoch, **{k: float(v) / max(seen, 1) for k, v in sums.items()}}
            if not np.isfinite(record.get("loss", 0.0)):
                raise TrainingFailed(f"{phase}: loss became {record['loss']} in epoch {epoch}")
            state.history.append(record)
            stop = [callback.on_epoch_end(state, record) for callback in callbacks]  # every one sees the epoch
            if any(stop):
                state.stopped_early = True
                break
        for callback in callbacks:
            callback.on_train_end(state)
        return state.history

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
