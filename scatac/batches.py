"""Mini-batches of cells for the autoencoders: sparse on the device, densified never whole.

TrainData holds what a model sees of every cell (the transformed input, a depth offset); Batch is
one mini-batch of it, moved to the device: the input as SparseRows (CPU, CUDA) that the first
layer multiplies without densifying, the binary target read off the input's sparsity pattern.
"""
from __future__ import annotations

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
    """A mini-batch of cells kept sparse on the device: what nn.PeakLinear multiplies without densifying.

    offsets: (batch,) int64 start of each cell's non-zeros; indices: (nnz,) int64 peak of each
    non-zero; values: (nnz,) float32. `shape` is (batch, n_peaks), as a dense batch's would be.
    """

    def __init__(self, offsets, indices, values, shape):
        self.offsets, self.indices, self.values, self.shape = offsets, indices, values, tuple(shape)

    def with_values(self, values):
        return SparseRows(self.offsets, self.indices, values, self.shape)

    def to_dense(self):
        import torch

        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        counts = torch.diff(self.offsets, append=self.offsets.new_tensor([self.indices.numel()]))
        row_of = torch.repeat_interleave(torch.arange(self.shape[0], device=self.values.device), counts)
        dense[row_of, self.indices] = self.values
        return dense


def cell_depth_logit(X: sp.csr_matrix) -> np.ndarray:
    """Logit of each cell's fraction of open peaks: the depth offset the decoders add to their logits."""
    open_fraction = np.diff(X.indptr) / X.shape[1]
    open_fraction = np.clip(open_fraction, 1e-6, 1 - 1e-6)
    return np.log(open_fraction / (1 - open_fraction)).astype(np.float32)


@dataclass
class TrainData:
    """What a model sees per cell: encoder input, binary reconstruction target, depth offset.

    inputs: CSR (n_cells, n_peaks) after the input transform. Every transform keeps the counts'
        sparsity pattern, so the binary target (1 where the peak is open) is read off the
        pattern of `inputs` per batch instead of being stored: a CSR copy less at atlas size.
    depth: (n_cells,) float32, logit of the fraction of open peaks.
    neighbors: (n_cells, k) int64 reference neighbours of each cell (pp.reference_neighbors), or None: what
        the neighbour term pairs cells with (Trainer.train's neighbor_weight).
    """

    inputs: sp.csr_matrix
    depth: np.ndarray
    neighbors: np.ndarray | None = None

    @classmethod
    def from_counts(cls, counts: sp.csr_matrix, transform_kind: str):
        counts = stored_nonzero(counts)  # an explicit zero would otherwise read as an open peak
        return cls(inputs=transform(counts, transform_kind), depth=cell_depth_logit(counts))

    @property
    def n_cells(self):
        return self.inputs.shape[0]

    @property
    def n_peaks(self):
        return self.inputs.shape[1]


def sparse_batches_supported(device) -> bool:
    # embedding_bag with per-sample weights runs on CPU and CUDA; Apple's MPS gets dense batches
    return device.type in ("cpu", "cuda")


class Batch:
    """One mini-batch on the device.

    x: the encoder input, SparseRows (CPU, CUDA) or a dense (batch, n_peaks) tensor (MPS);
    open: the batch's open peaks as SparseRows of ones (what a decoder reconstructs);
    target: the same as a dense (batch, n_peaks) float32 tensor, made on the device on first use
    (only the full decoder asks for it); depth: (batch, 1). Only this batch's rows are ever densified.
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
    order = rng.permutation(n_cells) if rng is not None else np.arange(n_cells)
    for start in range(0, n_cells, batch_size):
        yield order[start : start + batch_size]


def draw_neighbors(rows: np.ndarray, neighbors: np.ndarray, rng: np.random.Generator,
                   allowed: np.ndarray | None = None) -> np.ndarray:
    """One reference neighbour of each cell in `rows`, drawn at random: the cells the neighbour term pairs them with.

    neighbors: (n_cells, k) from TrainData. allowed: a boolean mask over all cells (early stopping's training
    cells): a neighbour outside it is replaced by the cell itself (a zero distance), so held-out cells stay unseen.
    Returns (len(rows),) int64.
    """
    picked = neighbors[rows, rng.integers(0, neighbors.shape[1], len(rows))]
    if allowed is not None:
        picked = np.where(allowed[picked], picked, rows)
    return picked
