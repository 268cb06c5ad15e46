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

from .batches import Batch, TrainData, iterate_batches
from .errors import TrainingFailed
from .runtime import keep_freed_memory, select_device


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
              epoch_callback: Callable | None = None) -> list:
        """Adam over shuffled mini-batches for `epochs` passes; returns one record per epoch.

        `loss_fn(model, batch, epoch)` returns a dict of scalar tensors whose "loss" entry is
        minimized (the others are logged); default `model.loss(batch, epoch=epoch)`. `parameters`
        limits what is trained (default: all of the model's). A record holds phase, epoch and the
        batch-size-weighted mean of each term.
        """
        import torch
        import torch.profiler
        from tqdm.auto import tqdm

        device = self.device
        if device.type == "cpu":
            keep_freed_memory()
        loss_fn = loss_fn or (lambda m, b, e: m.loss(b, epoch=e))
        params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
        optimizer = make_adam(params, lr, weight_decay, device)
        rng = np.random.default_rng(seed)
        history = []
        call = {"phase": phase, "epochs": epochs, "batch_size": batch_size, "n_cells": data.n_cells,
                "batches_per_epoch": math.ceil(data.n_cells / batch_size), "steady_batches": 0, "steady_seconds": 0.0}
        started = time.perf_counter()
        bar = tqdm(range(1, epochs + 1), desc=phase, unit="epoch", disable=not self.progress, file=sys.stderr,
                   leave=self.leave_progress)
        model.to(device)
        for epoch in bar:
            model.train()
            sums, seen = {}, 0
            after_first, steady = None, 0
            for index, rows in enumerate(iterate_batches(data.n_cells, batch_size, rng)):
                if self.max_batches is not None and index >= self.max_batches:
                    break
                if index == 1:
                    after_first = time.perf_counter()
                steady += index >= 1
                if len(rows) < 2 and data.n_cells >= 2:
                    continue  # a batch of one has no batch statistics
                with torch.profiler.record_function("assemble_batch"):  # named in bench/scale.py --profile
                    batch = Batch(data, rows, device)
                terms = loss_fn(model, batch, epoch)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    raise TrainingFailed(f"{phase}: loss became {loss.item()} at epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) * len(rows)
                seen += len(rows)
            if after_first is not None:
                call["steady_batches"] += steady
                call["steady_seconds"] += time.perf_counter() - after_first
            record = {"phase": phase, "epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()}}
            history.append(record)
            bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")
            if epoch_callback is not None:
                epoch_callback(epoch, record)
        call["seconds"] = time.perf_counter() - started
        self.calls.append(call)
        return history

    def encode(self, model, data: TrainData, batch_size: int = 1024) -> np.ndarray:
        """`model.embed(batch)` over every cell in order: (n_cells, latent_dim) float32."""
        import torch

        model.eval()
        chunks = []
        with torch.no_grad():
            for rows in iterate_batches(data.n_cells, batch_size, None):
                batch = Batch(data, rows, self.device, need_target=False)
                chunks.append(model.embed(batch).detach().float().cpu().numpy())
        return np.concatenate(chunks, axis=0).astype(np.float32)
