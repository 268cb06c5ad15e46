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

    Attributes
    ----------
    trainer : scatac.train.Trainer
        The trainer running the call (a callback reaches the loop through it: `trainer.full_loss`).
    model : torch.nn.Module
        The model being trained.
    data : scatac.batches.TrainData
        The cells (or a store's, `scatac.streamed.StoredData`).
    loss_fn : callable
        `loss_fn(model, batch, epoch)`, the loss terms of a batch.
    phase : str
        The call's name (its records' phase).
    epochs : int
        The epochs asked for.
    batch_size : int
        The call's batch size, resolved from 'auto'.
    batches : scatac.batches.BatchSource
        What the loop draws each epoch's batches from.
    epoch : int
        The epoch under way (1-based; 0 before the first).
    history : list of dict
        The records so far, one per epoch (the last one is the record on_epoch_end receives).
    stopped_early : bool
        A callback's on_epoch_end asked the loop to stop (which may be at the last epoch).
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

    Per train() call: `on_train_start`, then per epoch `on_epoch_start`, `on_batch_end` after each optimizer step,
    `on_batches_end` after the epoch's last step (before its record exists), `on_epoch_end`, and `on_train_end` once the
    loop is done (not after an exception). A callback may be passed to several calls (the StackedAE's phases):
    `on_train_start` is where it starts afresh. Pass callbacks to `scatac.train.Trainer` (every call) or to its
    `train` (one call).
    """

    def on_train_start(self, state: TrainState):
        """Before the first epoch of a train() call.

        Parameters
        ----------
        state : TrainState
        """
        pass

    def on_epoch_start(self, state: TrainState):
        """Before an epoch's first step (`state.epoch` is the epoch starting).

        Parameters
        ----------
        state : TrainState
        """
        pass

    def on_batch_end(self, state: TrainState, index: int, batch: Batch):
        """After each optimizer step.

        Parameters
        ----------
        state : TrainState
        index : int
            The step's number within the epoch (0-based).
        batch : scatac.batches.Batch
            The batch just trained on.
        """
        pass

    def on_batches_end(self, state: TrainState):
        """After the epoch's last step, before its record exists.

        Parameters
        ----------
        state : TrainState
        """
        pass

    def on_epoch_end(self, state: TrainState, record: dict) -> bool | None:
        """After an epoch, with its record.

        Parameters
        ----------
        state : TrainState
        record : dict
            The epoch's record (phase, epoch, the loss and its terms), already in `state.history`; may be changed in
            place.

        Returns
        -------
        bool or None
            True stops training after this epoch, once every callback has seen it.
        """

    def on_train_end(self, state: TrainState):
        """Once the loop is done (not after an exception).

        Parameters
        ----------
        state : TrainState
        """
        pass


class FullLossReport(Callback):
    """A sampled decoder's records report the full loss: each record's terms become the full loss on fixed cells.

    The sampled decoder's loss is an estimate; the full loss (every peak's logit) is taken on `REPORT_CELLS` cells, the
    same for a seed (within `training_rows` when some are held out), and the estimate is kept as "sampled_loss". Runs
    in training mode, as the full decoder's records are taken.

    Parameters
    ----------
    n_cells : int
        The cells of the data.
    seed : int
        Which cells.
    training_rows : numpy.ndarray or None
        The cells trained on, when early stopping holds some out.
    """

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
    """The held-out cells' loss in each record, and the stop once it stalls.

    The loss is taken with every peak's logit, the model in eval mode, on at most `VALIDATION_MAX_CELLS` of the
    held-out cells, and recorded as "validation_loss"; training stops once it has not improved by `MIN_IMPROVEMENT` of
    itself for `patience` epochs, not before `min_epochs`. The weights stay those of the last epoch, as Keras's and
    Lightning's EarlyStopping leave them by default.

    Parameters
    ----------
    held_out : numpy.ndarray
        (n_held,) sorted cell indices held out of training (`scatac.train.held_out_cells`).
    patience : int
        Epochs without improvement before stopping.
    min_epochs : int
        Stop no earlier (the VAE's KL warm-up, while the loss still changes meaning).
    """

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
    """One record per train() call, appended to `calls` (`Trainer.calls`, what bench/scale.py and `scatac.tl` read).

    Each record: phase, epochs, batch_size, n_cells and batches_per_epoch (of the batch source), epochs_trained,
    stopped_early (only when a callback stopped it), seconds, and the seconds and number of the steps after each
    epoch's first (which pays one-off costs): steady_seconds, steady_batches.

    Parameters
    ----------
    calls : list
        Where the records go.
    """

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
    """A tqdm bar of epochs per train() call, showing the last record's loss.

    Parameters
    ----------
    enabled : bool
        False shows nothing.
    leave : bool
        False makes the bar vanish when done (a bar under another bar).
    """

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
    """Call a function after each epoch: train()'s `epoch_callback`, for a caller that needs no other hook.

    Parameters
    ----------
    function : callable
        `function(epoch, record)`.
    """

    def __init__(self, function: Callable):
        self.function = function

    def on_epoch_end(self, state, record):
        self.function(state.epoch, record)


__all__ = ["Callback", "TrainState", "FullLossReport", "EarlyStopping", "Timing", "Progress", "EpochFunction"]
