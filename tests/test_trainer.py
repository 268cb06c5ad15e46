"""The training loop's pieces: callbacks see its hooks in order and can stop it, and a batch source other than the
in-memory one is what it trains on."""
from dataclasses import replace

import numpy as np
import torch

import scatac
from conftest import cpu_trainer, resolved, train_data
from scatac.batches import Batch, BatchSource, InMemoryBatches
from scatac.models.ae import AutoEncoder
from scatac.train import Callback


class Recorder(Callback):
    """Writes down each hook as it is called; asks to stop once `stop_at` epochs have run."""

    def __init__(self, stop_at=None):
        self.stop_at, self.calls, self.records = stop_at, [], []

    def on_train_start(self, state):
        self.calls.append(("train_start", state.phase))

    def on_epoch_start(self, state):
        self.calls.append(("epoch_start", state.epoch))

    def on_batch_end(self, state, index, batch):
        self.calls.append(("batch_end", state.epoch, index))

    def on_batches_end(self, state):
        self.calls.append(("batches_end", state.epoch))

    def on_epoch_end(self, state, record):
        self.calls.append(("epoch_end", state.epoch))
        self.records.append((dict(record), record is state.history[-1]))
        return self.stop_at is not None and state.epoch >= self.stop_at

    def on_train_end(self, state):
        self.calls.append(("train_end", state.epoch, state.stopped_early))


def test_a_callback_sees_every_hook_in_order_and_stops_training(demo_adata):
    adata = demo_adata.copy()
    recorder = Recorder(stop_at=2)
    trainer = cpu_trainer()
    trainer.callbacks.append(recorder)
    scatac.tl.ae(adata, 4, epochs=6, hidden_dims=(32,), early_stopping=True, patience=50, trainer=trainer)

    steps = trainer.calls[-1]["batches_per_epoch"]
    epoch = lambda e: [("epoch_start", e), *[("batch_end", e, i) for i in range(steps)], ("batches_end", e),
                       ("epoch_end", e)]
    assert recorder.calls == [("train_start", "train"), *epoch(1), *epoch(2), ("train_end", 2, True)]
    # the loop stopped where the callback said, and the run's records say so
    assert adata.uns["AE"]["epochs_trained"] == {"train": 2} and len(adata.uns["AE"]["loss"]) == 2
    assert trainer.calls[-1]["epochs_trained"] == 2 and trainer.calls[-1]["stopped_early"]
    # a user's callback comes after the trainer's own: the record it gets is complete, and the one kept
    for record, kept in recorder.records:
        assert kept and {"loss", "validation_loss"} <= set(record)


def test_a_callback_that_never_stops_leaves_every_epoch(demo_adata):
    recorder = Recorder()
    trainer = cpu_trainer()
    run = resolved("AE", hidden_dims=(16,), epochs=3, batch_size=256)
    history = trainer.train(AutoEncoder(train_data(demo_adata).n_peaks, 4, **run.network), train_data(demo_adata),
                            run.training, 0, callbacks=[recorder])
    assert [r["epoch"] for r in history] == [1, 2, 3] and recorder.calls[-1] == ("train_end", 3, False)
    assert "stopped_early" not in trainer.calls[-1]


class FixedRows(BatchSource):
    """The same cells every epoch, in `chunks`, each paired with its `partners` when given."""

    def __init__(self, data, chunks, partners=None):
        self.data, self.chunks, self.partners = data, chunks, partners
        self.n_cells, self.batches_per_epoch = sum(map(len, chunks)), len(chunks)

    def epoch(self, epoch):
        cpu = torch.device("cpu")
        for index, rows in enumerate(self.chunks):
            batch = Batch(self.data, rows, cpu)
            yield batch, None if self.partners is None else (batch, Batch(self.data, self.partners[index], cpu))


def test_the_loop_trains_on_the_batch_source_it_is_given(demo_adata):
    data = train_data(demo_adata)
    run = resolved("AE", hidden_dims=(16,), epochs=3, batch_size=64, neighbor_weight=0.1)
    torch.manual_seed(0)
    model = AutoEncoder(data.n_peaks, 4, **run.network)
    chunks = [np.arange(10, 26), np.array([3, 700, 5])]
    seen = []

    def loss_fn(model, batch, epoch):
        seen.append((epoch, batch.rows.tolist()))
        return model.loss(batch, epoch=epoch)

    trainer = cpu_trainer()
    history = trainer.train(model, data, run.training, 0, loss_fn=loss_fn, batches=FixedRows(data, chunks))
    assert seen == [(epoch, rows.tolist()) for epoch in (1, 2, 3) for rows in chunks]
    assert len(history) == 3 and all("neighbor" not in record for record in history)
    call = trainer.calls[-1]
    assert (call["n_cells"], call["batches_per_epoch"], call["steady_batches"]) == (19, 2, 3)

    # neighbour batches from the source drive the neighbour term
    partners = [rows[::-1].copy() for rows in chunks]
    history = trainer.train(model, data, replace(run.training, epochs=2), 0, batches=FixedRows(data, chunks, partners))
    assert all(np.isfinite(record["neighbor"]) for record in history)


def test_in_memory_batches_keep_to_their_rows_and_their_limit(demo_adata):
    data = train_data(demo_adata)
    rows = np.arange(0, data.n_cells, 3)
    data.neighbors = np.tile(np.arange(data.n_cells), (data.n_cells, 1))[:, :6]  # cells 0..5: some outside `rows`
    source = InMemoryBatches(data, 40, torch.device("cpu"), 0, rows=rows, neighbors=data.neighbors, max_batches=4)
    assert (source.n_cells, source.batches_per_epoch) == (len(rows), -(-len(rows) // 40))
    for epoch in (1, 2):
        pairs = list(source.epoch(epoch))
        assert len(pairs) == 4
        for batch, (anchors, partners) in pairs:
            assert np.isin(batch.rows, rows).all() and np.isin(partners.rows, rows).all()
            assert anchors is batch and len(partners.rows) == len(batch.rows)
    full = list(InMemoryBatches(data, 40, torch.device("cpu"), 0, rows=rows).epoch(1))
    assert all(pairs is None for _, pairs in full)
    assert sorted(np.concatenate([batch.rows for batch, _ in full])) == rows.tolist()

