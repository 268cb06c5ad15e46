"""Cell data and mini-batches read from an on-disk store (scatac.io.store) instead of memory: atlas scale.

StoredData is what TrainData is to the training loop (n_cells, n_peaks, nnz, open_fraction(), batch(rows, device),
depth, neighbors) over a store's filtered cells and peaks: it holds O(n_cells + n_peaks) arrays (which store row
each cell is, its depth offset; each peak's column and transform weight) and reads, filters and transforms the rows
of a batch when asked. StreamedBatches is a BatchSource that visits the store in blocks of contiguous cells in a
random order, through a shuffle buffer, as streamed loaders do (scvi-tools' AnnLoader, WebDataset's shuffle).

    counts = scatac.io.store.open_store("atlas.store.h5ad")
    data = StoredData.filtered(counts, "tfidf")              # SCALE's filter, in passes over the store's blocks
    batches = StreamedBatches(data, batch_size=256, device=torch.device("cpu"), seed=0)
    trainer.train(model, data, epochs, 256, lr, seed, batches=batches)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .batches import Batch, BatchSource, TrainData, rows_of
from .errors import info
# filter_store lives beside the store, where convert_to_store runs it over a source's blocks too; named here as before
from .io.store import (DEFAULT_BLOCK_CELLS, StoredCounts, StoreStatistics, canonical_rows, filter_store,  # noqa: F401
                       open_store, select_columns)
from .pp import filter_message, peak_weights, transform_rows


def depth_logit(open_peaks: np.ndarray, n_peaks: int) -> np.ndarray:
    """`scatac.batches.cell_depth_logit` from each cell's open peaks: the logit of the fraction open.

    Parameters
    ----------
    open_peaks : numpy.ndarray
        (n_cells,) each cell's open peaks.
    n_peaks : int
        The peaks there are.

    Returns
    -------
    numpy.ndarray
        (n_cells,) float32.
    """
    open_fraction = np.asarray(open_peaks) / n_peaks
    open_fraction = np.clip(open_fraction, 1e-6, 1 - 1e-6)
    return np.log(open_fraction / (1 - open_fraction)).astype(np.float32)


def _column_map(peak_mask: np.ndarray) -> np.ndarray:
    """(n_store_peaks,) int32: each kept peak's column among the kept ones, -1 for the others."""
    return np.where(peak_mask, np.cumsum(peak_mask) - 1, -1).astype(np.int32)


class StoredData:
    """A store's cells as the training loop sees them: TrainData's protocol, the rows read from disk per batch.

    For the same counts and masks, `batch(rows, device)` gives exactly the values, peaks and depth that
    `TrainData.from_counts(<the filtered counts in memory>, transform_kind).batch(rows, device)` gives: the weights are
    fitted on all served cells, and every transform is row-local given them (`scatac.pp.transform_rows`). Memory: the
    arrays below and the store's indptr, O(n_cells + n_peaks); a batch's rows are read when asked. One pass over the
    served cells' blocks counts what the transform and the depth need when it is built.

    Parameters
    ----------
    counts : scatac.io.store.StoredCounts or str or Path
        The store, or its path.
    transform_kind : str
        The input transform (`scatac.pp.transform`'s kinds).
    cell_mask : numpy.ndarray or None
        (n_store_cells,) bool, the cells served (None: all).
    peak_mask : numpy.ndarray or None
        (n_store_peaks,) bool, the peaks served (None: all).
    block_cells : int
        Cells read at a time in that pass.
    progress : bool
        A tqdm bar over that pass.

    Attributes
    ----------
    counts : scatac.io.store.StoredCounts
        The store read from.
    transform_kind : str
        The input transform.
    cells : numpy.ndarray
        (n_cells,) int64, the store row of each cell served (the kept cells, in store order).
    peaks : numpy.ndarray
        (n_peaks,) int64, the store column of each peak served.
    depth : numpy.ndarray
        (n_cells,) float32, the logit of each cell's fraction of open peaks among those served.
    weights : numpy.ndarray or None
        (n_peaks,) float64 per-peak transform weights fitted on the served cells (`scatac.pp.peak_weights`).
    cells_per_peak : numpy.ndarray
        (n_peaks,) int64, served cells opening each peak.
    open_peaks : numpy.ndarray
        (n_cells,) int64, each served cell's open served peaks.
    neighbors : None
        No reference neighbours at this scale: the neighbour term is off when streaming.
    stream_block_cells, stream_buffer_blocks : int
        The blocks and buffers of `streamed_batches`.
    filter_summary : dict or None
        `scatac.pp.filter_masks`'s summary when built by `filtered`.
    """

    neighbors = None
    stream_block_cells = DEFAULT_BLOCK_CELLS  # what streamed_batches reads at a time
    stream_buffer_blocks = 4

    def __init__(self, counts: StoredCounts | str | Path, transform_kind: str, cell_mask: np.ndarray | None = None,
                 peak_mask: np.ndarray | None = None, *, block_cells: int = DEFAULT_BLOCK_CELLS,
                 progress: bool = False):
        """Serve the cells of `cell_mask` and the peaks of `peak_mask` (None: all) of `counts` (a StoredCounts or a
        store's path) transformed by `transform_kind`. One pass over the served cells' blocks counts what the
        transform and the depth need (open peaks per cell, cells opening and largest value of each peak)."""
        from .params import TRANSFORMS

        if transform_kind not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform_kind!r}; allowed: {', '.join(TRANSFORMS)}")
        self.counts = counts if isinstance(counts, StoredCounts) else open_store(counts)
        self.transform_kind = transform_kind
        cell_mask = np.ones(self.counts.n_cells, bool) if cell_mask is None else np.asarray(cell_mask, dtype=bool)
        peak_mask = np.ones(self.counts.n_peaks, bool) if peak_mask is None else np.asarray(peak_mask, dtype=bool)
        if cell_mask.shape != (self.counts.n_cells,) or peak_mask.shape != (self.counts.n_peaks,):
            raise ValueError(f"masks of shapes {cell_mask.shape} and {peak_mask.shape} for a store of "
                             f"{self.counts.n_cells} cells x {self.counts.n_peaks} peaks")
        self.cells = np.flatnonzero(cell_mask).astype(np.int64)
        self.peaks = np.flatnonzero(peak_mask).astype(np.int64)
        self.column_of = _column_map(peak_mask)
        self.filter_summary = None
        n_peaks = len(self.peaks)
        open_peaks = np.zeros(self.counts.n_cells, dtype=np.int64)  # over the store's rows; served ones kept below
        cells_per_peak = np.zeros(n_peaks, dtype=np.int64)
        peak_max = np.zeros(n_peaks, dtype=np.float32)  # the values' type: ufunc.at is slow across types
        for start, block in self.counts.blocks(block_cells, progress):
            served = cell_mask[start:start + block.shape[0]]
            if not served.any():
                continue
            block = canonical_rows(block)
            block = self._columns(block if served.all() else block[np.flatnonzero(served)])
            open_peaks[start + np.flatnonzero(served)] = np.diff(block.indptr)
            cells_per_peak += np.bincount(block.indices, minlength=n_peaks)
            np.maximum.at(peak_max, block.indices, np.abs(block.data))
        self.open_peaks = open_peaks[self.cells]
        self.cells_per_peak = cells_per_peak
        self.depth = depth_logit(self.open_peaks, n_peaks)
        self.weights = peak_weights(transform_kind, cells_per_peak, len(self.cells), peak_max.astype(np.float64))

    @classmethod
    def filtered(cls, counts: StoredCounts | str | Path, transform_kind: str, *, min_cells_per_peak=3,
                 max_cells_per_peak=1.0, min_peaks_per_cell=10, n_top_peaks=None,
                 block_cells: int = DEFAULT_BLOCK_CELLS, progress: bool = False, verbose: bool = False) -> "StoredData":
        """The cells and peaks SCALE's filter keeps, served transformed.

        The filter runs in passes over the store's blocks (`scatac.io.store.filter_store`), with the thresholds as
        `scatac.pp.filter` takes and checks them.

        Parameters
        ----------
        counts : scatac.io.store.StoredCounts or str or Path
            The store, or its path.
        transform_kind : str
            The input transform.
        min_cells_per_peak, max_cells_per_peak, min_peaks_per_cell, n_top_peaks
            The filter's thresholds.
        block_cells : int
            Cells read at a time.
        progress : bool
            A tqdm bar over each pass.
        verbose : bool
            Print the filter's one-line summary.

        Returns
        -------
        StoredData
        """
        from .params import FILTER

        values = FILTER.resolve(dict(min_cells_per_peak=min_cells_per_peak, max_cells_per_peak=max_cells_per_peak,
                                     min_peaks_per_cell=min_peaks_per_cell, n_top_peaks=n_top_peaks), where="filter")
        counts = counts if isinstance(counts, StoredCounts) else open_store(counts)
        cell_mask, peak_mask, summary = filter_store(counts, **values, block_cells=block_cells, progress=progress)
        if verbose:
            info(filter_message(summary, values))
        data = cls(counts, transform_kind, cell_mask, peak_mask, block_cells=block_cells, progress=progress)
        data.filter_summary = summary
        return data

    def _columns(self, block: sp.csr_matrix) -> sp.csr_matrix:
        if len(self.peaks) == self.counts.n_peaks:
            return block
        return select_columns(block, self.column_of, len(self.peaks))

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def n_peaks(self) -> int:
        return len(self.peaks)

    @property
    def nnz(self) -> int:
        """Open served peaks of every served cell together: the stored values of the transformed input."""
        return int(self.open_peaks.sum())

    @property
    def obs_names(self):
        """The served cells' barcodes (reads the store's obs on first use)."""
        return self.counts.obs_names[self.cells]

    @property
    def var_names(self):
        return self.counts.var_names[self.peaks]

    def open_fraction(self) -> np.ndarray:
        """(n_peaks,) float64: the share of served cells in which each peak is open."""
        return self.cells_per_peak / max(self.n_cells, 1)

    def rows_data(self, rows: np.ndarray) -> TrainData:
        """The cells `rows` (positions among the served cells, any order) read, filtered and transformed: an
        in-memory TrainData of len(rows) rows, in the order asked."""
        rows = np.asarray(rows, dtype=np.int64)
        block = self._columns(canonical_rows(self.counts.read_cells(self.cells[rows])))
        return TrainData(inputs=transform_rows(block, self.transform_kind, self.weights), depth=self.depth[rows])

    def batch(self, rows: np.ndarray, device) -> Batch:
        """The cells `rows` (any order) as one Batch on `device`, read from the store; batch.rows is `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        batch = Batch(self.rows_data(rows), np.arange(len(rows)), device)
        batch.rows = rows
        return batch

    def streamed_batches(self, batch_size: int, seed: int, device, rows: np.ndarray | None = None, world=None,
                         max_batches: int | None = None) -> "StreamedBatches":
        """The BatchSource the training loop draws from for these cells (train.Trainer.batch_source asks for it):
        StreamedBatches over `rows` (None: all), this process's shard of the blocks when `world` (a
        distributed.World: rank, size) has several processes, `stream_block_cells` cells a block and
        `stream_buffer_blocks` blocks a buffer (attributes, set them to change)."""
        shard = (world.rank, world.size) if world is not None and world.size > 1 else None
        n_cells = self.n_cells if rows is None else len(rows)
        # at least MIN_BLOCKS_PER_RANK blocks each, so that the blocks left over when they do not share out evenly
        # (every rank takes as many batches as the least served) are a small part of an epoch
        ranks = shard[1] if shard else 1
        block_cells = max(1, min(self.stream_block_cells, n_cells // (MIN_BLOCKS_PER_RANK * ranks)))
        return StreamedBatches(self, batch_size, device, seed, rows, block_cells=block_cells,
                               buffer_blocks=self.stream_buffer_blocks, max_batches=max_batches, shard=shard)


MIN_BLOCKS_PER_RANK = 8


def _take(data: TrainData, positions: np.ndarray) -> TrainData:
    """Rows of an in-memory TrainData, in the order given."""
    indptr, indices, values = rows_of(data.inputs, positions)
    inputs = sp.csr_matrix((values, indices, indptr), shape=(len(positions), data.n_peaks))
    return TrainData(inputs=inputs, depth=data.depth[positions])


def _joined(first: TrainData, second: TrainData) -> TrainData:
    return TrainData(inputs=sp.vstack([first.inputs, second.inputs], format="csr"),
                     depth=np.concatenate([first.depth, second.depth]))


class StreamedBatches(BatchSource):
    """Mini-batches streamed from a StoredData in blocks of contiguous cells, through a shuffle buffer.

    Each epoch visits this shard's blocks of `block_cells` consecutive cells (of `rows`, in store order) in a random
    order, reads `buffer_blocks` of them at a time (one read of each block's stretch of the store), shuffles the
    buffer's cells and yields mini-batches of `batch_size` from it; cells a buffer leaves over (fewer than a batch) open
    the next buffer's first batch, so every batch is full except an epoch's last. Each (batch, None) pair has no
    neighbour batch: the neighbour term needs reference neighbours, which are not computed at this scale. Every cell of
    `rows` appears exactly once per epoch unless `max_batches` or `shard` stops the epoch earlier. As streamed loaders
    do (scvi-tools' AnnLoader, WebDataset's shuffle).

    Parameters
    ----------
    data : StoredData
        The cells to read.
    batch_size : int
        Cells per batch.
    device : torch.device
        Where batches go.
    seed : int
        Each epoch's order comes from default_rng([seed, epoch]): the same seed and epoch give the same batches,
        whatever epochs were drawn before (a resumed run replays them).
    rows : numpy.ndarray or None
        (n,) positions among data's cells to train on (early stopping's training cells); None: all. Their order does
        not matter (blocks follow the store; a repeat counts once); with `shard`, every rank must pass the same rows,
        since the blocks are cut from them.
    block_cells : int
        Cells per block, the unit of reading and of the shuffle's coarse order.
    buffer_blocks : int
        Blocks per shuffle buffer: a larger buffer mixes cells of more blocks in each batch.
    max_batches : int or None
        Yield at most N pairs per epoch (bench/scale.py's time per batch).
    shard : tuple of int or None
        (rank, world_size): only block i % world_size == rank is this rank's. Every rank must take as many steps per
        epoch (collective operations wait for each other), so batches_per_epoch is the smallest over ranks, and a rank
        with more cells than that many batches holds leaves the rest of its epoch's visit order unread.
    prefetch : bool
        Read the next buffer in a background thread while this one's batches are used (memory: two buffers at a time
        instead of one).

    Attributes
    ----------
    n_cells : int
        The cells a full epoch of this rank yields.
    batches_per_epoch : int
        The pairs it yields (not counting max_batches, as InMemoryBatches counts them).
    """

    def __init__(self, data: StoredData, batch_size: int, device, seed: int, rows: np.ndarray | None = None, *,
                 block_cells: int = DEFAULT_BLOCK_CELLS, buffer_blocks: int = 4, max_batches: int | None = None,
                 shard: tuple[int, int] | None = None, prefetch: bool = True):
        if batch_size < 1 or block_cells < 1 or buffer_blocks < 1:
            raise ValueError("batch_size, block_cells and buffer_blocks must be >= 1")
        rank, world_size = shard if shard is not None else (0, 1)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
        self.data, self.batch_size, self.device, self.seed = data, batch_size, device, seed
        self.block_cells, self.buffer_blocks, self.max_batches, self.prefetch = (block_cells, buffer_blocks,
                                                                                  max_batches, prefetch)
        self.rank, self.world_size = rank, world_size
        self.cells = np.arange(data.n_cells, dtype=np.int64) if rows is None else \
            np.unique(np.asarray(rows, dtype=np.int64))
        if len(self.cells) == 0:
            raise ValueError("no cells to stream")
        n_blocks = math.ceil(len(self.cells) / block_cells)
        if n_blocks < world_size:
            raise ValueError(f"{n_blocks} blocks of {block_cells} cells cannot be shared by {world_size} ranks: "
                             "lower block_cells")
        block_sizes = np.minimum(block_cells, len(self.cells) - block_cells * np.arange(n_blocks))
        cells_per_rank = [int(block_sizes[r::world_size].sum()) for r in range(world_size)]
        self.blocks = np.arange(rank, n_blocks, world_size)
        self.batches_per_epoch = min(math.ceil(n / batch_size) for n in cells_per_rank)
        self.n_cells = min(cells_per_rank[rank], self.batches_per_epoch * batch_size)

    def block_cells_of(self, block: int) -> np.ndarray:
        """Positions among data's cells of block `block`'s cells."""
        return self.cells[block * self.block_cells:(block + 1) * self.block_cells]

    def _read(self, buffer: np.ndarray) -> tuple[np.ndarray, TrainData]:
        # in store order: each block is one read and nothing is gathered; the buffer is shuffled after
        cells = np.sort(np.concatenate([self.block_cells_of(block) for block in buffer]))
        return cells, self.data.rows_data(cells)

    def epoch(self, epoch: int):
        import torch.profiler

        rng = np.random.default_rng([self.seed, epoch])
        order = self.blocks[rng.permutation(len(self.blocks))]
        buffers = [order[i:i + self.buffer_blocks] for i in range(0, len(order), self.buffer_blocks)]
        limit = self.batches_per_epoch if self.max_batches is None else min(self.max_batches, self.batches_per_epoch)
        executor = None
        if self.prefetch and len(buffers) > 1:
            from concurrent.futures import ThreadPoolExecutor

            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scatac-stream")
        emitted = 0
        pending, pending_rows = None, None  # cells the last buffer left over, fewer than a batch

        def batch_of(data: TrainData, rows: np.ndarray) -> Batch:
            with torch.profiler.record_function("assemble_batch"):  # named in bench/scale.py --profile
                batch = Batch(data, np.arange(data.n_cells), self.device)
            batch.rows = rows
            return batch

        try:
            upcoming = executor.submit(self._read, buffers[0]) if executor and buffers else None
            for index, buffer in enumerate(buffers):
                if emitted >= limit:
                    return
                if upcoming is not None:
                    cells, loaded = upcoming.result()
                    upcoming = executor.submit(self._read, buffers[index + 1]) if index + 1 < len(buffers) else None
                else:
                    cells, loaded = self._read(buffer)
                shuffled = rng.permutation(len(cells))
                start = 0
                if pending is not None:
                    start = min(self.batch_size - pending.n_cells, len(shuffled))
                    head = shuffled[:start]
                    pending = _joined(pending, _take(loaded, head))
                    pending_rows = np.concatenate([pending_rows, cells[head]])
                    if pending.n_cells < self.batch_size:
                        continue
                    yield batch_of(pending, pending_rows), None
                    emitted += 1
                    pending, pending_rows = None, None
                while start < len(shuffled) and emitted < limit:
                    positions = shuffled[start:start + self.batch_size]
                    if len(positions) < self.batch_size:
                        pending, pending_rows = _take(loaded, positions), cells[positions]
                        break
                    with torch.profiler.record_function("assemble_batch"):
                        batch = Batch(loaded, positions, self.device)
                    batch.rows = cells[positions]
                    yield batch, None
                    emitted += 1
                    start += self.batch_size
            if pending is not None and emitted < limit:
                yield batch_of(pending, pending_rows), None
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)


__all__ = ["StoredData", "StreamedBatches", "depth_logit"]
