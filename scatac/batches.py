"""Mini-batches of cells for the autoencoders: sparse on the device, densified never whole.

TrainData holds what a model sees of every cell (the transformed input, a depth offset); Batch is
one mini-batch of it, moved to the device: the input as SparseRows (CPU, CUDA) that the first
layer multiplies without densifying, the binary target read off the input's sparsity pattern.
A BatchSource hands the training loop an epoch's batches: InMemoryBatches shuffles TrainData's rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .pp import stored_nonzero, transform


def _to_device(tensor, device):
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def rows_of(X: sp.csr_matrix, rows: np.ndarray):
    """The chosen rows of a CSR matrix as (indptr, indices, data) arrays, without scipy's fancy-indexing copy
    of the whole index structure (rows need not be sorted)."""
    starts, stops = X.indptr[rows], X.indptr[rows + 1]
    lengths = stops - starts
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    # positions of every selected non-zero: start of its row plus its offset in the row
    positions = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
    return indptr, X.indices[positions], X.data[positions]


class SparseRows:
    """A mini-batch of cells kept sparse on the device: what `scatac.nn.PeakLinear` multiplies without densifying.

    Parameters
    ----------
    offsets : torch.Tensor
        (batch,) int64, the start of each cell's non-zeros.
    indices : torch.Tensor
        (nnz,) int64, the peak of each non-zero.
    values : torch.Tensor
        (nnz,) float32, the values.
    shape : tuple of int
        (batch, n_peaks), as a dense batch's would be.
    """

    def __init__(self, offsets, indices, values, shape):
        self.offsets, self.indices, self.values, self.shape = offsets, indices, values, tuple(shape)

    def with_values(self, values):
        """The same pattern with other values (nnz,)."""
        return SparseRows(self.offsets, self.indices, values, self.shape)

    def to_dense(self):
        """The batch as a dense (batch, n_peaks) float32 tensor."""
        import torch

        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        counts = torch.diff(self.offsets, append=self.offsets.new_tensor([self.indices.numel()]))
        row_of = torch.repeat_interleave(torch.arange(self.shape[0], device=self.values.device), counts)
        dense[row_of, self.indices] = self.values
        return dense


def cell_depth_logit(X: sp.csr_matrix) -> np.ndarray:
    """The logit of each cell's fraction of open peaks: the depth offset the decoders add to their logits.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts, stored values non-zero.

    Returns
    -------
    numpy.ndarray
        (n_cells,) float32.
    """
    open_fraction = np.diff(X.indptr) / X.shape[1]
    open_fraction = np.clip(open_fraction, 1e-6, 1 - 1e-6)
    return np.log(open_fraction / (1 - open_fraction)).astype(np.float32)


@dataclass
class TrainData:
    """What a model sees of every cell: the encoder's input, the binary reconstruction target, the depth offset.

    Every transform keeps the counts' sparsity pattern, so the binary target (1 where the peak is open) is read off the
    pattern of `inputs` per batch instead of being stored: a CSR copy less at atlas size. Build it with `from_counts`.

    Attributes
    ----------
    inputs : scipy.sparse.csr_matrix
        (n_cells, n_peaks), the counts after the input transform.
    depth : numpy.ndarray
        (n_cells,) float32, the logit of each cell's fraction of open peaks.
    neighbors : numpy.ndarray or None
        (n_cells, k) int64 reference neighbours of each cell (`scatac.pp.reference_neighbors`): what the neighbour term
        pairs cells with.
    n_cells, n_peaks, nnz : int
        The input's shape and stored values.
    """

    inputs: sp.csr_matrix
    depth: np.ndarray
    neighbors: np.ndarray | None = None

    @classmethod
    def from_counts(cls, counts: sp.csr_matrix, transform_kind: str):
        """The cells of a count matrix, transformed for the encoder.

        Parameters
        ----------
        counts : scipy.sparse.csr_matrix
            (n_cells, n_peaks) counts.
        transform_kind : str
            The input transform (`scatac.pp.transform`).

        Returns
        -------
        TrainData
        """
        counts = stored_nonzero(counts)  # an explicit zero would otherwise read as an open peak
        return cls(inputs=transform(counts, transform_kind), depth=cell_depth_logit(counts))

    @property
    def n_cells(self):
        return self.inputs.shape[0]

    @property
    def n_peaks(self):
        return self.inputs.shape[1]

    @property
    def nnz(self) -> int:
        """Stored values of the input: the open peaks of every cell together."""
        return self.inputs.nnz

    def open_fraction(self) -> np.ndarray:
        """(n_peaks,) float64: the share of cells in which each peak is open (what the sampled decoder draws by)."""
        return np.bincount(self.inputs.indices, minlength=self.n_peaks) / max(self.n_cells, 1)

    def batch(self, rows: np.ndarray, device) -> "Batch":
        """The cells `rows` (any order) as one Batch on `device`: what the training loop, its callbacks and the
        encoder ask of any cell data (an on-disk store's gives the same)."""
        return Batch(self, rows, device)


def sparse_batches_supported(device) -> bool:
    # embedding_bag with per-sample weights runs on CPU and CUDA; Apple's MPS gets dense batches
    return device.type in ("cpu", "cuda")


class Batch:
    """One mini-batch on the device; only this batch's rows are ever densified.

    Parameters
    ----------
    data : TrainData
        The cells.
    rows : numpy.ndarray
        The batch's cells (any order).
    device : torch.device
        Where the batch goes.

    Attributes
    ----------
    rows : numpy.ndarray
        The batch's cells.
    x : SparseRows or torch.Tensor
        The encoder's input: SparseRows on CPU and CUDA, a dense (batch, n_peaks) tensor on MPS.
    open : SparseRows
        The batch's open peaks, as ones: what a decoder reconstructs.
    target : torch.Tensor
        The same as a dense (batch, n_peaks) float32 tensor, made on first use (only the full decoder asks for it).
    depth : torch.Tensor
        (batch, 1), the cells' depth offsets.
    """

    def __init__(self, data: TrainData, rows: np.ndarray, device):
        import torch

        self.rows = rows
        indptr, indices, values = rows_of(data.inputs, np.asarray(rows))
        shape = (len(rows), data.n_peaks)
        offsets = _to_device(torch.from_numpy(indptr[:-1]), device)
        peaks = _to_device(torch.from_numpy(indices.astype(np.int64)), device)
        self.open = SparseRows(offsets, peaks, torch.ones(len(indices), device=device), shape)
        self.x = self.open.with_values(_to_device(torch.from_numpy(values.astype(np.float32, copy=False)), device))
        if not sparse_batches_supported(device):
            self.x = self.x.to_dense()
        self._target = None
        self.depth = torch.from_numpy(data.depth[rows]).to(device).unsqueeze(1)

    @property
    def target(self):
        if self._target is None:
            self._target = self.open.to_dense()
        return self._target


def iterate_batches(n_cells: int, batch_size: int, rng: np.random.Generator | None):
    """Cut `n_cells` cells into batches, in a random order or in order.

    Parameters
    ----------
    n_cells : int
        The cells.
    batch_size : int
        Cells per batch (the last may be smaller).
    rng : numpy.random.Generator or None
        Shuffles the cells; None keeps their order.

    Yields
    ------
    numpy.ndarray
        Each batch's cell positions.
    """
    order = rng.permutation(n_cells) if rng is not None else np.arange(n_cells)
    for start in range(0, n_cells, batch_size):
        yield order[start : start + batch_size]


def draw_neighbors(rows: np.ndarray, neighbors: np.ndarray, rng: np.random.Generator,
                   allowed: np.ndarray | None = None) -> np.ndarray:
    """One reference neighbour of each cell, drawn at random: the cells the neighbour term pairs them with.

    Parameters
    ----------
    rows : numpy.ndarray
        The cells of a batch.
    neighbors : numpy.ndarray
        (n_cells, k) from `TrainData.neighbors`.
    rng : numpy.random.Generator
        The draw.
    allowed : numpy.ndarray or None
        A boolean mask over all cells (early stopping's training cells): a neighbour outside it is replaced by the cell
        itself (a zero distance), so that held-out cells stay unseen.

    Returns
    -------
    numpy.ndarray
        (len(rows),) int64.
    """
    picked = neighbors[rows, rng.integers(0, neighbors.shape[1], len(rows))]
    if allowed is not None:
        picked = np.where(allowed[picked], picked, rows)
    return picked


class BatchSource:
    """What the training loop asks for each epoch's mini-batches: an in-memory shuffle, or a streamed or sharded reader.

    The loop (`scatac.train.Trainer.train`) does not know which. `epoch(epoch)` yields (batch, pairs): a Batch of the
    cells to train on, and for the neighbour term either None (no such term in the step) or (anchors, partners), two
    Batches of the same length: cells of the batch and one reference neighbour of each, in the same order.

    Attributes
    ----------
    n_cells : int
        The cells an epoch covers.
    batches_per_epoch : int
        The pairs a full epoch yields (what the timing records scale by).
    """

    n_cells: int = 0
    batches_per_epoch: int = 0

    def epoch(self, epoch: int):
        """Yield one epoch's (batch, pairs), as the class says.

        Parameters
        ----------
        epoch : int
            The epoch (1-based).
        """
        raise NotImplementedError


class InMemoryBatches(BatchSource):
    """Shuffled mini-batches of TrainData's rows, every epoch a new permutation of `rows`.

    One generator, default_rng(seed), draws each epoch's permutation and then, step by step, the neighbours: the order
    a seed's runs depend on.

    Parameters
    ----------
    data : TrainData
        The cells.
    batch_size : int
        Cells per batch.
    device : torch.device
        Where batches go.
    seed : int
        The shuffle's seed.
    rows : numpy.ndarray or None
        (n,) int64 cells to train on, e.g. early stopping's training cells (None: every cell).
    neighbors : numpy.ndarray or None
        (n_cells, k) reference neighbours to pair each cell with (`TrainData.neighbors`).
    max_batches : int or None
        Yield only the first N pairs of an epoch (bench/scale.py's time per batch).
    pairs_from_epoch : int
        The first epoch whose batches carry neighbour pairs (before it, none are drawn: the term is off).
    """

    def __init__(self, data: TrainData, batch_size: int, device, seed: int, rows: np.ndarray | None = None,
                 neighbors: np.ndarray | None = None, max_batches: int | None = None, pairs_from_epoch: int = 1):
        self.data, self.batch_size, self.device = data, batch_size, device
        self.rows, self.max_batches, self.pairs_from_epoch = rows, max_batches, pairs_from_epoch
        self.rng = np.random.default_rng(seed)
        self.n_cells = data.n_cells if rows is None else len(rows)
        self.batches_per_epoch = math.ceil(self.n_cells / batch_size)
        self.neighbors = neighbors if neighbors is not None and neighbors.shape[1] > 0 else None
        self.allowed = None  # outside `rows`: cells no step may see, not even as a neighbour
        if self.neighbors is not None and rows is not None:
            self.allowed = np.zeros(data.n_cells, dtype=bool)
            self.allowed[rows] = True

    def epoch(self, epoch: int):
        import torch.profiler

        for index, positions in enumerate(iterate_batches(self.n_cells, self.batch_size, self.rng)):
            # stopped before the neighbour draw: a skipped step must not move the generator
            if self.max_batches is not None and index >= self.max_batches:
                return
            rows = positions if self.rows is None else self.rows[positions]
            with torch.profiler.record_function("assemble_batch"):  # named in bench/scale.py --profile
                batch = self.data.batch(rows, self.device)
            pairs = None
            if self.neighbors is not None and epoch >= self.pairs_from_epoch and len(rows) > 1:  # one cell has no pair
                # every cell of the batch: the term on a sample of 64 cells of each batch of 512 cost less but lost
                # more ARI than the term gives (docs/tried-and-dropped.md, "Forms of the neighbour term")
                partners = draw_neighbors(rows, self.neighbors, self.rng, self.allowed)
                pairs = (batch, self.data.batch(partners, self.device))
            yield batch, pairs


__all__ = ["TrainData", "Batch", "SparseRows", "BatchSource", "InMemoryBatches", "iterate_batches", "draw_neighbors",
           "cell_depth_logit"]
