"""The training loop's callbacks, in the style of Lightning's hooks, and the state they see (TrainState).

Trainer.train (scatac.train) runs its steps and hands every epoch to callbacks: FullLossReport (a sampled decoder's
records get the full loss), EarlyStopping (a held-out loss, and the stop), Timing (Trainer.calls), Progress (the
bar), EpochFunction (train()'s epoch_callback), then the trainer's and the call's own (the VAE's KL warm-up,
models.vae.KLWarmup). scatac.train re-exports the names here. Nothing here imports torch or scatac.train: a
callback reaches the loop through its TrainState (state.trainer.full_loss, state.model).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .batches import Batch, BatchSource, TrainData

REPORT_CELLS = 128  # cells on which a sampled decoder's run reports the full loss each epoch
VALIDATION_MAX_CELLS = 2048  # early stopping's loss, with every peak's logit, on at most this many held-out cells
MIN_IMPROVEMENT = 1e-4  # relative: a held-out loss this much below the best so far counts as better


@dataclass(kw_only=True)
class TrainState:
    """One train() call as its callbacks see it (built by keyword: its fields are many and alike).

    epochs and batch_size: the call's (batch_size resolved from 'auto'); batches: the BatchSource the loop draws from;
    epoch: the epoch under way (1-based, 0 before the first);
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
    """`function(epoch, record)` after each epoch: train()'s epoch_callback, for a caller that needs no other hook."""

    def __init__(self, function: Callable):
        self.function = function

    def on_epoch_end(self, state, record):
        self.function(state.epoch, record)
