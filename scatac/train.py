"""The training loop every autoencoder uses: Adam over shuffled sparse mini-batches, then encoding.

A Trainer says where and how a model is trained; compare.py and bench/scale.py pass their own
(progress bars that vanish, a limit on batches, the timing of each call) instead of changing
module state. What one run asks of the loop travels as one TrainConfig, resolved from the method's
card (methods.Method.resolve): one default per option, the card's.

Trainer.train is a short loop over the steps a BatchSource (batches.InMemoryBatches by default) yields; what
happens around the steps lives in Callbacks (scatac.callbacks, re-exported here), in the style of Lightning's
hooks: FullLossReport (a sampled decoder's records), EarlyStopping, Timing (Trainer.calls), Progress (the bar)
and EpochFunction.

The run policy beside it: which decoder a run uses (decoder_for, configure_decoder: the full Bernoulli loss or
nn.PeakSampler's estimate) and the batch size 'auto' picks (auto_batch_size).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Mapping

import numpy as np

from .batches import BatchSource, InMemoryBatches, TrainData, iterate_batches
# the callbacks lived here before scatac.callbacks: `from scatac.train import Callback, EarlyStopping, ...` still works
from .callbacks import (MIN_IMPROVEMENT, REPORT_CELLS, VALIDATION_MAX_CELLS, Callback, EarlyStopping, EpochFunction,  # noqa: F401
                        FullLossReport, Progress, Timing, TrainState)
from .errors import TrainingFailed
from .runtime import keep_freed_memory, select_device

REPORT_BATCH = 64  # the full loss is taken on a (64, n_peaks) block at a time


@dataclass(frozen=True)
class TrainConfig:
    """What one train() call asks of the loop, each value from the method's card.

    `scatac.params` declares the options, `scatac.methods` gives each its default there; frozen, so that a phase that
    trains otherwise says so with dataclasses.replace (StackedAE's pretraining: its own epochs, no neighbour term, no
    early stopping).

    Attributes
    ----------
    epochs : int
        Passes over the data.
    batch_size : int or str
        Cells per step, or 'auto' (`auto_batch_size`).
    lr, weight_decay : float
        Adam's.
    decoder : {'auto', 'full', 'sampled'}
        The likelihood (`configure_decoder`).
    negatives : str
        The sampled decoder's peaks per batch: a count ('2000') or a ratio to a cell's open peaks ('2x').
    neighbor_weight : float
        The neighbour term's weight (0: off).
    neighbor_after : int
        Epochs on the reconstruction alone before the term is turned on (no pairs drawn until then).
    early_stopping : bool
        Hold `validation_fraction` of the cells out and stop once their loss has not improved for `patience` epochs.
    patience : int
    validation_fraction : float
    """

    epochs: int
    batch_size: int | str
    lr: float
    weight_decay: float
    decoder: str
    negatives: str
    neighbor_weight: float
    neighbor_after: int
    early_stopping: bool
    patience: int
    validation_fraction: float

    @classmethod
    def from_options(cls, options: Mapping, epochs: int) -> "TrainConfig":
        """The config of a method's checked options, training for `epochs`.

        Parameters
        ----------
        options : mapping
            Every option, checked (`scatac.params.Options.resolve`).
        epochs : int
            The epochs of this training (a card names its epochs option: StackedAE has two).

        Returns
        -------
        TrainConfig
        """
        return cls(epochs=epochs, **{f.name: options[f.name] for f in fields(cls) if f.name != "epochs"})


def held_out_cells(n_cells: int, fraction: float, seed: int) -> np.ndarray:
    """The cells early stopping keeps out of training, the same for a seed whatever the model.

    Parameters
    ----------
    n_cells : int
        The cells.
    fraction : float
        The share held out (at least one cell, at most all but one).
    seed : int
        The draw's seed.

    Returns
    -------
    numpy.ndarray
        Sorted cell indices.
    """
    n_held = min(max(1, round(fraction * n_cells)), n_cells - 1)
    return np.sort(np.random.default_rng([seed, 7]).permutation(n_cells)[:n_held])


def auto_batch_size(n_cells: int, epochs: int, sampled: bool) -> int:
    """batch_size 'auto': 64; with the sampled decoder, a power of two from 64 to 1024.

    With the sampled decoder it keeps about 8 steps an epoch and at least `MIN_STEPS` steps in the training phase. A
    step's fixed cost (Adam over the two n_peaks x 512 matrices, their zeroed gradients) is paid per batch, so fewer,
    larger batches amortize it; the bounds are where the ARI held when measured (the documentation's benchmarks page,
    "The sampled decoder"). The full decoder was tuned at 64.

    Parameters
    ----------
    n_cells : int
        The cells trained on.
    epochs : int
        The training phase's epochs.
    sampled : bool
        Whether the model uses the sampled decoder.

    Returns
    -------
    int
    """
    if not sampled:
        return 64
    per_epoch = 2 ** round(np.log2(max(n_cells, 1) / 8))
    per_phase = 2 ** np.floor(np.log2(max(n_cells * epochs / MIN_STEPS, 1)))
    return int(min(1024, max(64, min(per_epoch, per_phase))))


MIN_STEPS = 400


def negatives_per_batch(negatives: str, data: TrainData) -> int:
    """The `negatives` option as a number of peaks.

    Parameters
    ----------
    negatives : str
        A count ('2000'), or a ratio to the open peaks of a cell ('4x').
    data : scatac.batches.TrainData
        The cells (their mean open peaks).

    Returns
    -------
    int
        At least 1.
    """
    if negatives.endswith("x"):
        return max(1, round(float(negatives[:-1]) * data.nnz / max(data.n_cells, 1)))
    return int(negatives)


# Below this many cells the sampled decoder lost ARI for the methods trained in few steps (measured on the labelled
# sets, docs/benchmarks.md "The sampled decoder"); the full decoder is cheap there anyway.
SAMPLED_FROM_CELLS = 2000


def decoder_for(data: TrainData, decoder: str, negatives: str) -> str:
    """The decoder a fit uses: 'full' or 'sampled' as asked, or what 'auto' decides for these cells.

    'auto' takes the sampled one from `SAMPLED_FROM_CELLS` cells on, and only where a step computes fewer than half the
    logits of the full one (sparse data).

    Parameters
    ----------
    data : scatac.batches.TrainData
        The cells.
    decoder : {'auto', 'full', 'sampled'}
        The option.
    negatives : str
        The sampled decoder's negatives option.

    Returns
    -------
    str
        'full' or 'sampled'.
    """
    if decoder != "auto":
        return decoder
    logits_per_cell = data.nnz / max(data.n_cells, 1) + negatives_per_batch(negatives, data)
    return "sampled" if data.n_cells >= SAMPLED_FROM_CELLS and 2 * logits_per_cell < data.n_peaks else "full"


def configure_decoder(model, data: TrainData, config: TrainConfig, device):
    """Give every PeakOutput of the model a PeakSampler when the decoder resolves to 'sampled'.

    With 'full' (`decoder_for`) the model keeps the full Bernoulli loss.

    Parameters
    ----------
    model : torch.nn.Module
        The autoencoder.
    data : scatac.batches.TrainData
        The cells (their open frequencies).
    config : TrainConfig
        Its decoder and negatives.
    device : torch.device
        Where the sampler draws.
    """
    if decoder_for(data, config.decoder, config.negatives) == "full":
        return
    from .nn import PeakOutput, PeakSampler

    open_fraction = data.open_fraction()
    m = negatives_per_batch(config.negatives, data)
    for layer in model.modules():
        if isinstance(layer, PeakOutput):
            layer.sampler = PeakSampler(open_fraction, m, device=device)


@dataclass
class Fitted:
    """What a method's fit returns.

    Attributes
    ----------
    features : numpy.ndarray
        (n_cells, latent_dim) float32, in cell order.
    model : torch.nn.Module
        The trained model.
    history : list of dict
        Its loss per epoch: phase, epoch, loss and its terms.
    extra : dict
        What else the fit wants recorded (the VAE's prior).
    """

    features: np.ndarray
    model: object = None
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def make_adam(params, lr: float, weight_decay: float, device):
    """Adam with torch's fused kernel where the device has one: on CPU it cut the step over an AE's two
    100,000 x 512 matrices several-fold (bench/scale.py; docs/benchmarks.md, "Scale")."""
    import torch

    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def training_cells(n_cells: int, validation_fraction: float, seed: int) -> tuple:
    """Early stopping's split of the cells: (training rows, held-out rows), each sorted int64."""
    held_out = held_out_cells(n_cells, validation_fraction, seed)
    return np.setdiff1d(np.arange(n_cells), held_out), held_out


@dataclass
class Trainer:
    """Where and how models are trained: Adam over shuffled sparse mini-batches, then encoding.

    compare.py and bench/scale.py pass their own Trainer (progress bars that vanish, a limit on batches, the timing of
    each call) instead of changing module state. Under several processes (torchrun) each process trains on its own
    shard of the cells with batch_size / world.size cells a step under DistributedDataParallel, the records are summed
    over the ranks and `encode` gathers every rank's cells; only rank 0 shows progress.

    Parameters
    ----------
    device : torch.device or None
        Where to train (None: cuda, then mps, then cpu).
    progress : bool
        Show a bar per training phase.
    leave_progress : bool
        False makes each bar vanish when done (runs under another bar).
    max_batches : int or None
        Train only the first N mini-batches of each epoch (bench/scale.py's time per batch).
    calls : list
        One record per train() call (`scatac.callbacks.Timing`): its phase, epochs, seconds, and the seconds and number
        of the batches after the first of each epoch (the first pays one-off costs).
    callbacks : list of scatac.callbacks.Callback
        Added to every train() call, after the trainer's own.
    world : scatac.distributed.World or None
        The processes training together (default: the process group this process has joined under torchrun, else a
        world of one).
    shards : dict or None
        What the last train() call's sharding was (world_size, cells_per_rank, cells_on_two_ranks).
    """

    device: object = None
    progress: bool = True
    leave_progress: bool = True
    max_batches: int | None = None
    calls: list = field(default_factory=list)
    callbacks: list = field(default_factory=list)
    world: object = None
    shards: dict | None = None

    def __post_init__(self):
        from . import distributed

        if self.device is None:
            self.device = select_device("auto")
        self.world = self.world or distributed.current()
        self.progress = self.progress and self.world.is_main

    def batch_source(self, data: TrainData, batch_size: int, seed: int, training_rows: np.ndarray | None,
                     neighbor_weight: float, neighbor_after: int = 0) -> BatchSource:
        """The batches train() draws from unless given its own.

        Shuffled in memory over `training_rows`, each cell paired with a reference neighbour when the neighbour term is
        on; a store's cells (`scatac.streamed.StoredData`) streamed in shuffled blocks. Under several processes, this
        rank's shard of those cells (`scatac.distributed.shard`), batch_size / world.size cells a step.

        Parameters
        ----------
        data : scatac.batches.TrainData
            The cells.
        batch_size : int
            The global batch.
        seed : int
            The order's seed.
        training_rows : numpy.ndarray or None
            The cells to train on (None: every cell).
        neighbor_weight : float
            The neighbour term's weight (0: no pairs).
        neighbor_after : int
            Epochs without pairs before the term is turned on.

        Returns
        -------
        scatac.batches.BatchSource
        """
        from . import distributed

        neighbors = data.neighbors if neighbor_weight > 0 else None
        if hasattr(data, "streamed_batches"):  # an on-disk store: read in blocks, never whole
            return data.streamed_batches(batch_size=distributed.rank_batch_size(batch_size, self.world), seed=seed,
                                         rows=training_rows, world=self.world, max_batches=self.max_batches,
                                         device=self.device)
        if not self.world.is_distributed:
            return InMemoryBatches(data, batch_size, self.device, seed, training_rows, neighbors, self.max_batches,
                                   pairs_from_epoch=neighbor_after + 1)
        rows = distributed.shard(np.arange(data.n_cells) if training_rows is None else training_rows, self.world, seed)
        shards = distributed.gather_objects(rows, self.world)
        self.shards = {"world_size": self.world.size, "cells_per_rank": [len(part) for part in shards],
                       "cells_on_two_ranks": int(sum(map(len, shards)) - len(np.unique(np.concatenate(shards))))}
        return InMemoryBatches(data, distributed.rank_batch_size(batch_size, self.world), self.device,
                               [seed, self.world.rank], rows, neighbors, self.max_batches,
                               pairs_from_epoch=neighbor_after + 1)

    def step_loss(self, model, loss_fn: Callable, neighbor_weight: float, seed: int, partial: bool = False):
        """What a step calls for its loss and terms: `scatac.nn.StepLoss`, in DistributedDataParallel under torchrun.

        Parameters
        ----------
        model : torch.nn.Module
            The autoencoder.
        loss_fn : callable
            `loss_fn(model, batch, epoch)`.
        neighbor_weight : float
            The neighbour term's weight.
        seed : int
            Under several processes, each rank's own random streams come from it.
        partial : bool
            The call trains part of the model (StackedAE's pretraining); then, and where the model says some of its
            parameters wait (the VAE's prior, until its warm-up ends), DDP looks for parameters without a gradient after
            each step.

        Returns
        -------
        torch.nn.Module
            Called as step(batch, pairs, epoch) -> (loss, terms).
        """
        from .nn import StepLoss

        step = StepLoss(model, loss_fn, neighbor_weight)
        if not self.world.is_distributed:
            return step
        import torch
        from torch.nn.parallel import DistributedDataParallel

        # every rank built the same model from the run's seed (DDP also copies rank 0's weights to the others);
        # from here each draws its own input dropout and sampled decoder's negatives, as different cells need
        torch.manual_seed(int(np.random.default_rng([seed, self.world.rank]).integers(2**31)))

        return DistributedDataParallel(step, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       find_unused_parameters=partial or getattr(model, "some_parameters_wait", False),
                                       # the gradients live in DDP's all-reduce buckets: no second copy of two
                                       # n_peaks x 512 matrices per process
                                       gradient_as_bucket_view=True)

    def train(self, model, data: TrainData, config: TrainConfig, seed: int, *, loss_fn: Callable | None = None,
              parameters=None, phase: str = "train", epoch_callback: Callable | None = None, min_epochs: int = 0,
              callbacks: list = (), batches: BatchSource | None = None) -> list:
        """Adam over shuffled mini-batches for `config.epochs` passes.

        A sampled decoder's records report the full loss (`scatac.callbacks.FullLossReport`); with
        `config.early_stopping`, `config.validation_fraction` of the cells (`held_out_cells`) are left out of training
        and their loss is each record's "validation_loss" (`scatac.callbacks.EarlyStopping`). Neighbour term, with
        `config.neighbor_weight` > 0 and `data.neighbors`: each cell of a batch is paired with one of its reference
        neighbours (`scatac.batches.draw_neighbors`) from epoch `config.neighbor_after` + 1 on; the features of both (`model.embed`, the neighbour's without a
        gradient: a fixed target) give the record's "neighbor" ratio (`scatac.nn.neighbor_ratio`), and the loss
        minimized becomes loss + neighbor_weight x ratio x loss, the last factor held fixed: the term is weighed against
        the reconstruction's own size, which differs a hundredfold between data sets, so that one weight holds on all.

        Parameters
        ----------
        model : torch.nn.Module
            With `loss(batch, epoch=...)` and `embed(batch)`.
        data : scatac.batches.TrainData
            The cells (or any source of `data.batch(rows, device)`).
        config : TrainConfig
            epochs, batch_size ('auto': `auto_batch_size`), lr, weight_decay, the neighbour term's weight and early
            stopping's patience and validation_fraction.
        seed : int
            The batches' order and early stopping's held-out cells.
        loss_fn : callable or None
            `loss_fn(model, batch, epoch)` returns a dict of scalar tensors whose "loss" entry is minimized (the others
            are logged); default `model.loss(batch, epoch=epoch)`.
        parameters : iterable of torch.nn.Parameter or None
            What is trained (default: all of the model's).
        phase : str
            The records' and `calls`' name of this call.
        epoch_callback : callable or None
            `epoch_callback(epoch, record)` after each epoch (`scatac.callbacks.EpochFunction`).
        min_epochs : int
            Early stopping stops no earlier (the VAE's KL warm-up, while the loss still changes meaning).
        callbacks : list of scatac.callbacks.Callback
            This call's own, after the trainer's.
        batches : scatac.batches.BatchSource or None
            Replaces `batch_source` (the held-out split is then its own).

        Returns
        -------
        list of dict
            Per epoch: phase, epoch and the batch-size-weighted mean of each term.

        Raises
        ------
        scatac.TrainingFailed
            The loss became NaN or infinite.
        """
        from .nn import sampled_outputs

        device, epochs, batch_size = self.device, config.epochs, config.batch_size
        if batch_size == "auto":
            batch_size = auto_batch_size(data.n_cells, epochs, bool(sampled_outputs(model)))
        if device.type == "cpu":
            keep_freed_memory()
        loss_fn = loss_fn or (lambda m, b, e: m.loss(b, epoch=e))
        params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
        optimizer = make_adam(params, config.lr, config.weight_decay, device)
        training_rows = held_out = None
        if config.early_stopping:
            training_rows, held_out = training_cells(data.n_cells, config.validation_fraction, seed)
        if batches is None:
            batches = self.batch_source(data, batch_size, seed, training_rows, config.neighbor_weight,
                                        config.neighbor_after)
        state = TrainState(trainer=self, model=model, data=data, loss_fn=loss_fn, phase=phase, epochs=epochs,
                           batch_size=batch_size, batches=batches)
        # in this order: the full loss replaces the record's terms before anything reads them
        callbacks = [*([FullLossReport(data.n_cells, seed, training_rows)] if sampled_outputs(model) else []),
                     *([EarlyStopping(held_out, config.patience, min_epochs)] if config.early_stopping else []),
                     Timing(self.calls), Progress(self.progress, self.leave_progress),
                     *([EpochFunction(epoch_callback)] if epoch_callback is not None else []),
                     *self.callbacks, *callbacks]
        model.to(device)
        step = self.step_loss(model, loss_fn, config.neighbor_weight, seed, partial=parameters is not None)
        for callback in callbacks:
            callback.on_train_start(state)
        for epoch in range(1, epochs + 1):
            state.epoch = epoch
            model.train()
            for callback in callbacks:
                callback.on_epoch_start(state)
            terms = self.epoch_steps(state, optimizer, callbacks, step)
            for callback in callbacks:
                callback.on_batches_end(state)
            record = {"phase": phase, "epoch": epoch, **terms}
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

    def epoch_steps(self, state: TrainState, optimizer, callbacks: list, step) -> dict:
        """One epoch's optimizer steps, on the batches `state.batches` yields for `state.epoch`.

        Each step is followed by the callbacks' on_batch_end; `step(batch, pairs, epoch)` gives the loss and its terms
        (`step_loss`).

        Parameters
        ----------
        state : scatac.callbacks.TrainState
            The call.
        optimizer : torch.optim.Optimizer
            Adam.
        callbacks : list of scatac.callbacks.Callback
            The call's callbacks.
        step : callable
            From `step_loss`.

        Returns
        -------
        dict
            Each term's batch-size-weighted mean over the epoch, over every rank's cells (train()'s record).
        """
        import torch

        from . import distributed

        sums, seen = {}, 0
        for index, (batch, pairs) in enumerate(state.batches.epoch(state.epoch)):
            loss, terms = step(batch, pairs, state.epoch)
            # a check reads the loss back to the host: every step on CPU, where that is free; once
            # an epoch on a GPU, whose steps then queue up without waiting (train())
            if self.device.type != "cuda" and not torch.isfinite(loss):
                raise TrainingFailed(f"{state.phase}: loss became {loss.item()} at epoch {state.epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value.detach().double() * len(batch.rows)
            seen += len(batch.rows)
            for callback in callbacks:
                callback.on_batch_end(state, index, batch)
        if self.world.is_distributed:
            totals = distributed.sum_over_ranks({"cells seen": seen, **{k: float(v) for k, v in sums.items()}},
                                                self.world)
            seen, sums = totals.pop("cells seen"), totals
        return {k: float(v) / max(seen, 1) for k, v in sums.items()}

    def full_loss(self, model, data: TrainData, rows: np.ndarray, loss_fn: Callable, epoch: int) -> dict:
        """The loss terms with every peak's logit, on some cells, without a gradient.

        In the model's current mode (training: as the full decoder's records; eval: early stopping's held-out loss), and
        without touching the random streams of training.

        Parameters
        ----------
        model : torch.nn.Module
            The model.
        data : scatac.batches.TrainData
            The cells.
        rows : numpy.ndarray
            Which cells.
        loss_fn : callable
            `loss_fn(model, batch, epoch)`.
        epoch : int
            The epoch the loss is taken in.

        Returns
        -------
        dict
            {term: mean over the cells}.
        """
        import torch

        from .nn import full_decoder

        sums = {}
        with torch.no_grad(), full_decoder(model), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for start in range(0, len(rows), REPORT_BATCH):
                chunk = rows[start : start + REPORT_BATCH]
                for key, value in loss_fn(model, data.batch(chunk, self.device), epoch).items():
                    sums[key] = sums.get(key, 0.0) + float(value) * len(chunk)
        return {k: v / len(rows) for k, v in sums.items()}

    def encode(self, model, data: TrainData, batch_size: int = 1024) -> np.ndarray:
        """`model.embed(batch)` over every cell, in order: the features.

        Under several processes each rank encodes its own contiguous part of the cells and every rank gets them all
        (`scatac.distributed.gather_rows`).

        Parameters
        ----------
        model : torch.nn.Module
            The trained model.
        data : scatac.batches.TrainData
            The cells.
        batch_size : int
            Cells encoded at a time.

        Returns
        -------
        numpy.ndarray
            (n_cells, latent_dim) float32.
        """
        import torch

        from . import distributed

        own = np.array_split(np.arange(data.n_cells), self.world.size)[self.world.rank]
        model.eval()
        chunks = []
        with torch.no_grad():
            for positions in iterate_batches(len(own), batch_size, None):
                batch = data.batch(own[positions], self.device)
                chunks.append(model.embed(batch).detach().float().cpu().numpy())
        features = np.concatenate(chunks, axis=0).astype(np.float32) if chunks else np.zeros((0, 0), np.float32)
        if not self.world.is_distributed:
            return features
        return distributed.gather_rows(features, own, data.n_cells, self.world)


__all__ = ["Trainer", "TrainConfig", "Fitted", "auto_batch_size", "decoder_for", "configure_decoder",
           "negatives_per_batch", "held_out_cells"]
