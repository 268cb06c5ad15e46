"""An on-disk store of counts for data sets too large to hold whole: an .h5ad whose X is CSR (cells x peaks),
written and read in blocks of rows, never whole.

The store is an ordinary AnnData file, written with anndata's own element API (`anndata.io.write_elem`, and
`anndata.io.sparse_dataset(group).append` growing X block by block), so `anndata.read_h5ad(path)` and
`anndata.read_h5ad(path, backed="r")` open it: obs holds the barcodes as its index (and the cell types as
obs["label"] when known), var the peak names. X is canonical CSR (sorted indices, no duplicates, no stored
zeros) in `float32` unless asked otherwise, with a 64-bit indptr so that it may exceed 2**31 non-zeros.

Reading goes around anndata's backed objects, through h5py on the three arrays of X: the whole indptr,
(n_cells + 1,) int64, is held in memory, so any run of rows is one slice of `indices` and one of `data`.

    from scatac.io.store import convert_to_store, open_store
    convert_to_store("atlas.h5ad", "atlas.store.h5ad")      # one streaming pass over the source
    counts = open_store("atlas.store.h5ad")
    stats = counts.statistics()                                 # one pass: per-peak and per-cell counts
    for start, block in counts.blocks(4096): ...                # CSR blocks of rows, in order

A filtered store (`convert_to_store(..., filter=...)`) holds only the cells and peaks SCALE's filter keeps, and
records what it was made from; `filtered_store` writes one or reuses the one made from the same input and filter,
as the method scripts' and compare.py's --store do (`check_store_path` refuses a path it cannot use, up front).
"""
from __future__ import annotations

import contextlib
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import scipy.sparse as sp

from ..errors import InputError, fail, info, warn
from ..files import atomic_path

DEFAULT_BLOCK_CELLS = 4096
# HDF5 chunk of X's data and indices, in elements: large enough that a block of rows is a few chunk reads, small
# enough that one scattered row (read_cells) does not drag a large chunk from disk
CHUNK_ELEMENTS = 1 << 16
# read_cells reads two rows in one slice when fewer than this many non-zeros lie between them: one read of a
# few unwanted values costs less than a second h5py call
MERGE_GAP = CHUNK_ELEMENTS


class StoreStatistics(NamedTuple):
    """What one pass over a store's blocks counts: enough for the filter and every transform's per-peak fit.

    Attributes
    ----------
    cells_per_peak : numpy.ndarray
        (n_peaks,) int64, cells in which each peak holds a non-zero value.
    peaks_per_cell : numpy.ndarray
        (n_cells,) int64, non-zero peaks of each cell.
    peak_max : numpy.ndarray
        (n_peaks,) float64, each peak's largest absolute value (0 where it is never open).
    """

    cells_per_peak: np.ndarray
    peaks_per_cell: np.ndarray
    peak_max: np.ndarray


def canonical_rows(block, dtype=np.float32) -> sp.csr_matrix:
    """`block` as canonical CSR of `dtype` (sorted indices, no duplicates, no stored zeros): what a store holds
    and what `pp.stored_nonzero` would make of it. A copy only where something changes."""
    if not (sp.issparse(block) and block.format == "csr"):
        block = sp.csr_matrix(block)
    if block.dtype != dtype:
        block = block.astype(dtype)
    if not block.has_canonical_format:
        block = block.copy()
        block.sum_duplicates()  # also sorts the indices
    if block.nnz and not np.all(block.data != 0):
        block = block.copy()
        block.eliminate_zeros()
    return block


def select_columns(block: sp.csr_matrix, column_of: np.ndarray, n_columns: int) -> sp.csr_matrix:
    """The columns of `block` that `column_of` keeps, renumbered: `block[:, kept]` without scipy's copy of the
    whole index structure.

    block: CSR (rows, n_store_columns). column_of: (n_store_columns,) integer new column of each old one, -1 where
    dropped; increasing over the kept columns, so sorted indices stay sorted. Returns CSR (rows, n_columns).
    """
    new_columns = column_of[block.indices]
    kept = new_columns >= 0
    # kept values before each position: the new indptr is this count at the old row starts
    kept_before = np.zeros(block.nnz + 1, dtype=np.int32 if block.nnz < 2**31 else np.int64)
    np.cumsum(kept, out=kept_before[1:])
    indptr = kept_before[block.indptr].astype(np.int64)
    return sp.csr_matrix((block.data[kept], new_columns[kept].astype(np.int32), indptr),
                         shape=(block.shape[0], n_columns))


def _names_frame(frame, names, what: str):
    """`frame` (or an empty DataFrame) indexed by `names` (strings), its own index set aside."""
    import pandas as pd

    names = pd.Index([str(name) for name in names])
    if frame is None:
        return pd.DataFrame(index=names)
    if len(frame) != len(names):
        raise ValueError(f"{what} has {len(frame)} rows for {len(names)} names")
    frame = frame.copy()
    frame.index = names
    return frame


def write_store(blocks: Iterable, path, *, barcodes, peaks, obs=None, var=None, labels=None, uns: dict | None = None,
                dtype=np.float32, compression: str | None = None, progress: bool = True) -> Path:
    """Write cells x peaks counts, given as CSR blocks of consecutive rows, into a store (an .h5ad) at `path`.

    The store is written to a temporary file beside `path` and renamed into place once complete: a failure at any point
    (a bad block, an interrupt) leaves no partial file and an earlier store as it was.

    Parameters
    ----------
    blocks : iterable of scipy.sparse.csr_matrix
        (rows, n_peaks) each: the cells' rows in order, any number of rows each; read once, each block written and
        let go.
    path : str or Path
        The store to write; its folder must exist.
    barcodes : sequence of str
        (n_cells,) the cells' names: obs's index. Their number is the number of rows `blocks` must give.
    peaks : sequence of str
        (n_peaks,) the peaks' names: var's index.
    obs, var : pandas.DataFrame or None
        Per-cell and per-peak columns to keep (their index is replaced by `barcodes` and `peaks`).
    labels : numpy.ndarray or None
        (n_cells,) cell types, written as the categorical obs["label"].
    uns : dict or None
        Written as the file's uns.
    dtype : numpy dtype
        The values' type on disk (float32 by default, as `scatac.read` gives counts; uint8 holds 0/1 counts in a quarter
        of the space).
    compression : str or None
        An h5py filter for X's arrays ("gzip", "lzf"), or None: none makes reading fastest.
    progress : bool
        A tqdm bar of cells written (on stderr).

    Returns
    -------
    Path
        The store.
    """
    import anndata
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem
    from tqdm.auto import tqdm

    path = Path(path)
    if not path.parent.is_dir():
        fail(path, f"folder {path.parent} does not exist")
    n_cells, n_peaks = len(barcodes), len(peaks)
    obs = _names_frame(obs, barcodes, "obs")
    if labels is not None:
        if len(labels) != n_cells:
            raise ValueError(f"{len(labels)} labels for {n_cells} cells")
        obs["label"] = pd.Categorical(np.asarray(labels).astype(str))
    var = _names_frame(var, peaks, "var")
    # obs, var and uns first, through an X-less AnnData; then X, grown block by block
    frame = anndata.AnnData(obs=obs, var=var, uns=dict(uns or {}))
    empty = sp.csr_matrix((np.zeros(0, dtype), np.zeros(0, np.int32), np.zeros(1, np.int64)), shape=(0, n_peaks))
    dataset_kwargs = {"chunks": (CHUNK_ELEMENTS,), "indptr_dtype": np.int64}
    if compression is not None:
        dataset_kwargs["compression"] = compression
    written = 0
    with atomic_path(path) as staging, tqdm(total=n_cells, desc=f"writing {path.name}", unit=" cells",
                                             unit_scale=True, disable=not progress, leave=False) as bar:
        with h5py.File(staging, "w") as handle:
            write_elem(handle, "/", frame)
            write_elem(handle, "X", empty, dataset_kwargs=dataset_kwargs)
            X = sparse_dataset(handle["X"])
            for block in blocks:
                block = canonical_rows(block, dtype)
                if block.shape[1] != n_peaks:
                    raise ValueError(f"a block has {block.shape[1]} columns, the store {n_peaks} peaks")
                if written + block.shape[0] > n_cells:
                    raise ValueError(f"the blocks hold more than the {n_cells} cells named in barcodes")
                if block.shape[0]:
                    X.append(block)
                written += block.shape[0]
                bar.update(block.shape[0])
            if written != n_cells:
                raise ValueError(f"the blocks hold {written} cells, barcodes name {n_cells}")
    return path


class StoredCounts:
    """Counts in a store, read in blocks of rows through h5py: never the whole matrix.

    Made by `open_store`. Rows come back as CSR float32 (as `scatac.read` gives counts, whatever the dtype on disk),
    indices int32. Holds the file open until `close()` (or the end of a `with` block).

    Parameters
    ----------
    path : Path
        The store.
    handle : h5py.File
        The store, open for reading.

    Attributes
    ----------
    path : Path
        The store's path.
    n_cells, n_peaks : int
        X's shape (also `shape`).
    nnz : int
        X's stored values.
    indptr : numpy.ndarray
        (n_cells + 1,) int64, X's row pointers, held in memory (what makes any run of rows one read).
    obs, var : pandas.DataFrame
        The cells and the peaks (read on first use); `obs_names` and `var_names` their indexes.
    """

    def __init__(self, path, handle):
        self.path = Path(path)
        self._handle = handle
        group = handle["X"]
        self._indices, self._data = group["indices"], group["data"]
        self.indptr = group["indptr"][()].astype(np.int64, copy=False)
        shape = group.attrs["shape"] if "shape" in group.attrs else group.attrs["h5sparse_shape"]
        self.n_cells, self.n_peaks = int(shape[0]), int(shape[1])
        self.nnz = int(self.indptr[-1])

    @property
    def shape(self) -> tuple:
        return self.n_cells, self.n_peaks

    @cached_property
    def obs(self):
        from anndata.io import read_elem

        return read_elem(self._handle["obs"])

    @cached_property
    def var(self):
        from anndata.io import read_elem

        return read_elem(self._handle["var"])

    @property
    def obs_names(self):
        return self.obs.index

    @property
    def var_names(self):
        return self.var.index

    def close(self):
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"StoredCounts({str(self.path)!r}, {self.n_cells} cells x {self.n_peaks} peaks, {self.nnz} non-zeros)"

    def _csr(self, data, indices, indptr) -> sp.csr_matrix:
        return sp.csr_matrix((data.astype(np.float32, copy=False), indices.astype(np.int32, copy=False), indptr),
                             shape=(len(indptr) - 1, self.n_peaks))

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows start..stop-1 as CSR (stop - start, n_peaks) float32: one slice of indices and one of data."""
        start = min(max(0, int(start)), self.n_cells)
        stop = min(max(start, int(stop)), self.n_cells)
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return self._csr(self._data[lo:hi], self._indices[lo:hi], self.indptr[start:stop + 1] - lo)

    def read_cells(self, rows) -> sp.csr_matrix:
        """The cells `rows` (any order, repeats allowed) as CSR (len(rows), n_peaks) float32, in the order asked.

        Rows close together on disk are read in one slice (fewer than MERGE_GAP values between them): a sorted
        run of rows costs about what read_rows does, scattered rows one read each. Increasing rows made of runs of
        consecutive ones (blocks) come back without the gather into the order asked.
        """
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if len(rows) == 0:
            return self._csr(np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(1, np.int64))
        if rows.min() < 0 or rows.max() >= self.n_cells:
            raise IndexError(f"rows outside 0..{self.n_cells - 1}")
        unique, inverse = np.unique(rows, return_inverse=True)
        starts, stops = self.indptr[unique], self.indptr[unique + 1]
        # a new segment wherever too many unwanted values lie between one row and the next
        first_of_segment = np.r_[0, np.flatnonzero(starts[1:] - stops[:-1] > MERGE_GAP) + 1]
        last_of_segment = np.r_[first_of_segment[1:], len(unique)] - 1
        segment_lo, segment_hi = starts[first_of_segment], stops[last_of_segment]
        segment_base = np.zeros(len(first_of_segment), dtype=np.int64)  # where each segment lands in the buffer
        np.cumsum((segment_hi - segment_lo)[:-1], out=segment_base[1:])
        total = int(segment_base[-1] + segment_hi[-1] - segment_lo[-1])
        indices = np.empty(total, dtype=self._indices.dtype)
        data = np.empty(total, dtype=self._data.dtype)
        for lo, hi, base in zip(segment_lo, segment_hi, segment_base):
            if hi > lo:
                indices[base:base + hi - lo] = self._indices[lo:hi]
                data[base:base + hi - lo] = self._data[lo:hi]
        starts_segment = np.zeros(len(unique), dtype=bool)
        starts_segment[first_of_segment] = True
        if len(unique) == len(rows) and np.all(np.diff(rows) > 0) and \
                np.all((np.diff(unique) == 1) | starts_segment[1:]):
            # increasing rows, each segment a run of consecutive ones: the buffer is the answer as it stands
            indptr = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(stops - starts, out=indptr[1:])
            return self._csr(data, indices, indptr)
        segment_of_row = np.repeat(np.arange(len(first_of_segment)), np.diff(np.r_[first_of_segment, len(unique)]))
        buffer_start = starts - segment_lo[segment_of_row] + segment_base[segment_of_row]
        # gather the asked rows, in the order asked, out of the buffer
        lengths = (stops - starts)[inverse]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        positions = np.repeat(buffer_start[inverse] - indptr[:-1], lengths) + np.arange(indptr[-1])
        return self._csr(data[positions], indices[positions], indptr)

    def blocks(self, block_cells: int = DEFAULT_BLOCK_CELLS, progress: bool = False, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[int, sp.csr_matrix]]:
        """(first row, CSR block) of `block_cells` consecutive rows (fewer in the last), in order, from row
        `start` to `stop` (None: the end); `progress` shows a tqdm bar of cells read."""
        from tqdm.auto import tqdm

        stop = self.n_cells if stop is None else min(stop, self.n_cells)
        with tqdm(total=stop - start, desc=f"reading {self.path.name}", unit=" cells", unit_scale=True,
                  disable=not progress, leave=False) as bar:
            for first in range(start, stop, block_cells):
                block = self.read_rows(first, min(first + block_cells, stop))
                yield first, block
                bar.update(block.shape[0])

    def statistics(self, block_cells: int = DEFAULT_BLOCK_CELLS, progress: bool = False) -> StoreStatistics:
        """Per-peak and per-cell counts of the whole store in one pass over its blocks: see StoreStatistics.

        Only non-zero values count as open (a stored zero does not), as `pp.stored_nonzero` reads a matrix.
        Holds one block and the O(n_cells + n_peaks) results at a time.
        """
        return block_statistics(self.blocks(block_cells, progress), self.n_cells, self.n_peaks)


def block_statistics(blocks: Iterable, n_cells: int, n_peaks: int) -> StoreStatistics:
    """StoreStatistics of blocks of rows, in one pass.

    Holds one block and the O(n_cells + n_peaks) results at a time. Shared by a store's own pass and
    `convert_to_store`'s filter over a source's blocks.

    Parameters
    ----------
    blocks : iterable of (int, scipy.sparse.csr_matrix)
        (first row, CSR block) pairs covering rows 0 .. n_cells - 1.
    n_cells, n_peaks : int
        The matrix's shape.

    Returns
    -------
    StoreStatistics
    """
    cells_per_peak = np.zeros(n_peaks, dtype=np.int64)
    peaks_per_cell = np.zeros(n_cells, dtype=np.int64)
    # float32 as the values read: ufunc.at is many times slower when the two types differ
    peak_max = np.zeros(n_peaks, dtype=np.float32)
    for first, block in blocks:
        block = canonical_rows(block)
        cells_per_peak += np.bincount(block.indices, minlength=n_peaks)
        peaks_per_cell[first:first + block.shape[0]] = np.diff(block.indptr)
        np.maximum.at(peak_max, block.indices, np.abs(block.data))
    return StoreStatistics(cells_per_peak, peaks_per_cell, peak_max.astype(np.float64))


def filter_store(counts, min_cells_per_peak=3, max_cells_per_peak=1.0, min_peaks_per_cell=10,
                 n_top_peaks=None, *, statistics: StoreStatistics | None = None,
                 block_cells: int = DEFAULT_BLOCK_CELLS, progress: bool = False):
    """Which cells and peaks SCALE's filter keeps, from passes over a store's blocks.

    The same masks and summary as `scatac.pp.filter_masks` gives on the whole matrix. Peaks open in at least
    `min_cells_per_peak` and at most `max_cells_per_peak` cells stay (fractions below 1 are of the cells); cells with
    at least `min_peaks_per_cell` open peaks among those (a fraction: of those peaks); then peaks that only dropped
    cells opened go; `n_top_peaks` keeps the most often open of the rest.

    Passes: the one-pass statistics (cells opening each peak; skipped when given as `statistics`); a second pass
    counting each cell's open peaks among the peaks in range, which decides the cell, and, over the kept cells, the
    cells opening each peak (skipped when every peak is in range and every cell then kept: the first pass counted
    both); a third only when `n_top_peaks` drops peaks, for the cells left with none of the top peaks.

    Parameters
    ----------
    counts : StoredCounts
        Or anything with its `shape`, `path`, `blocks(block_cells, progress)` and `statistics(block_cells, progress)`
        (`convert_to_store`'s view of a source it streams).
    min_cells_per_peak, max_cells_per_peak, min_peaks_per_cell, n_top_peaks
        The thresholds, as `scatac.pp.filter` takes and checks them.
    statistics : StoreStatistics or None
        The store's statistics when already counted.
    block_cells : int
        Cells read at a time.
    progress : bool
        A tqdm bar over each pass.

    Returns
    -------
    cell_mask : numpy.ndarray
        (n_cells,) bool.
    peak_mask : numpy.ndarray
        (n_peaks,) bool.
    summary : dict
        As `scatac.pp.filter_masks`'s.
    """
    from ..pp import _open_per_cell, filter_decision

    statistics = statistics if statistics is not None else counts.statistics(block_cells, progress)
    n_cells, n_peaks = counts.shape

    def keep_cells(peak_mask, threshold):
        if peak_mask.all() and (statistics.peaks_per_cell >= threshold).all():
            return np.ones(n_cells, dtype=bool), statistics.cells_per_peak.copy()
        cell_mask = np.zeros(n_cells, dtype=bool)
        open_in_kept = np.zeros(n_peaks, dtype=np.int64)
        for start, block in counts.blocks(block_cells, progress):
            block = canonical_rows(block)
            kept = _open_per_cell(block, peak_mask) >= threshold
            cell_mask[start:start + block.shape[0]] = kept
            open_in_kept += np.bincount(block.indices[np.repeat(kept, np.diff(block.indptr))], minlength=n_peaks)
        return cell_mask, open_in_kept

    def open_per_cell(peak_mask):
        open_peaks = np.zeros(n_cells, dtype=np.int64)
        for start, block in counts.blocks(block_cells, progress):
            open_peaks[start:start + block.shape[0]] = _open_per_cell(canonical_rows(block), peak_mask)
        return open_peaks

    return filter_decision(counts.shape, statistics.cells_per_peak, keep_cells, open_per_cell, min_cells_per_peak,
                           max_cells_per_peak, min_peaks_per_cell, n_top_peaks, counts.path)


def _x_encoding(group) -> str:
    """What an AnnData group's X is: "csr_matrix", "csc_matrix", "array" (dense), or "missing"."""
    import h5py

    if "X" not in group:
        return "missing"
    X = group["X"]
    if isinstance(X, h5py.Dataset):
        return "array"
    encoding = X.attrs.get("encoding-type", X.attrs.get("h5sparse_format", ""))
    encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
    return {"csr": "csr_matrix", "csc": "csc_matrix"}.get(encoding, encoding)


def open_store(path) -> StoredCounts:
    """Open a store (an .h5ad whose X is CSR) for reading in blocks.

    Parameters
    ----------
    path : str or Path
        The store.

    Returns
    -------
    StoredCounts
        Holds the file open until `close()` (or the end of a `with` block).

    Raises
    ------
    scatac.InputError
        Naming the file when it is missing, not HDF5, not an AnnData file, or its X is dense or CSC (either is turned
        into a store by `convert_to_store`).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        fail(path, "no such file")
    if path.is_dir() or not h5py.is_hdf5(path):
        fail(path, "is not a store: expected an .h5ad (HDF5) file whose X is CSR; convert other inputs with "
                   "scatac.io.convert_to_store")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        fail(path, f"cannot be opened ({exc})")
    try:
        encoding = _x_encoding(handle)
        if encoding == "missing" or "obs" not in handle or "var" not in handle:
            kind = "a 10x HDF5 matrix" if "matrix" in handle else "not an AnnData file (no X, obs or var)"
            fail(path, f"is {kind}, not a store; convert it with scatac.io.convert_to_store")
        if encoding != "csr_matrix":
            what = {"array": "dense", "csc_matrix": "CSC (peaks x cells order)"}.get(encoding, f"{encoding!r}")
            fail(path, f"X is {what}, not CSR: its rows cannot be read a block at a time; convert it with "
                       "scatac.io.convert_to_store")
        counts = StoredCounts(path, handle)
        if len(counts.indptr) != counts.n_cells + 1 or counts._indices.shape != counts._data.shape or \
                counts._indices.shape[0] < counts.nnz:
            fail(path, "corrupt X: indptr, indices and data do not fit its shape")
        return counts
    except BaseException:
        handle.close()
        raise


# ---- conversion ---------------------------------------------------------------------------------------------------


class _Source(NamedTuple):
    """A source checked and ready to stream: names, tables, and `blocks(block_cells)` giving its CSR row blocks."""

    barcodes: list
    peaks: list
    obs: object
    var: object
    blocks: object


def _checked_block(block: sp.csr_matrix, source: Path) -> sp.csr_matrix:
    """A source's block as canonical CSR float32 once its values are counts (as scatac.read checks them)."""
    block = canonical_rows(block)
    if block.nnz:
        if not np.all(np.isfinite(block.data)):
            fail(source, "matrix contains NaN or infinite values")
        if block.data.min() < 0:
            fail(source, "matrix contains negative values; expected counts")
    return block


def _anndata_source(source: Path, layer, modality, use_selected, handle) -> _Source | None:
    """An .h5ad's (or an .h5mu modality's) CSR X or layer, or dense X, streamed by rows; None where it must be read
    whole (CSC, or anything else anndata can still read)."""
    import h5py
    from anndata.io import read_elem

    is_mudata = source.name.lower().endswith(".h5mu")
    if is_mudata:
        if "mod" not in handle:
            fail(source, "is not a MuData file: it has no 'mod' group")
        modality = modality or "atac"
        if modality not in handle["mod"]:
            fail(source, f"has no modality {modality!r} (it has: {', '.join(handle['mod'].keys()) or 'none'}); "
                         "choose one with --modality")
        group = handle["mod"][modality]
    else:
        if modality is not None:
            fail(source, "--modality applies to .h5mu files (MuData); this is an .h5ad")
        group = handle
    if "obs" not in group or "var" not in group:
        fail(source, "is not an AnnData file: it has no obs or var")
    if layer is not None:
        layers = list(group["layers"].keys()) if "layers" in group else []
        if layer not in layers:
            fail(source, f"has no layer {layer!r} (layers: {', '.join(layers) or 'none'})")
        matrix_group, where = group["layers"], layer
    else:
        matrix_group, where = group, "X"
    if where not in matrix_group:
        fail(source, "AnnData file has no X matrix")
    element = matrix_group[where]
    if isinstance(element, h5py.Dataset):
        if element.ndim != 2:
            fail(source, f"{where} is not a matrix (shape {element.shape})")
        encoding, shape = "array", element.shape
    else:
        encoding = _x_encoding(matrix_group) if where == "X" else \
            str(element.attrs.get("encoding-type", ""))
        if encoding != "csr_matrix":
            return None
        shape = tuple(int(v) for v in element.attrs["shape"])
    obs, var = read_elem(group["obs"]), read_elem(group["var"])
    if (len(obs), len(var)) != tuple(shape):
        fail(source, f"{where} is {shape[0]} x {shape[1]} but obs has {len(obs)} cells and var {len(var)} peaks")
    column_of = None
    if use_selected:
        if "selected" not in var:
            fail(source, "var has no 'selected' column (--use-selected reads SnapATAC2's select_features result)")
        selected = np.asarray(var["selected"], dtype=bool)
        if not selected.any():
            fail(source, "var['selected'] selects no peak")
        column_of = np.where(selected, np.cumsum(selected) - 1, -1)
        var = var[selected]
    n_columns = len(var)
    if encoding == "array":
        def rows(start, stop):
            return sp.csr_matrix(np.asarray(element[start:stop], dtype=np.float32))
    else:
        indptr = element["indptr"][()].astype(np.int64)
        indices, data = element["indices"], element["data"]
        if len(indptr) != shape[0] + 1 or indices.shape != data.shape or indptr[-1] > indices.shape[0] or \
                np.any(np.diff(indptr) < 0):
            fail(source, f"corrupt sparse {where}: indptr, indices and data do not fit its shape")

        def rows(start, stop):
            lo, hi = indptr[start], indptr[stop]
            columns = indices[lo:hi]
            if len(columns) and (columns.min() < 0 or columns.max() >= shape[1]):
                fail(source, f"corrupt sparse {where}: a column index lies outside its {shape[1]} columns")
            return sp.csr_matrix((data[lo:hi], columns, indptr[start:stop + 1] - lo), shape=(stop - start, shape[1]))

    def blocks(block_cells):
        for start in range(0, shape[0], block_cells):
            block = rows(start, min(start + block_cells, shape[0]))
            if column_of is not None:
                block = select_columns(canonical_rows(block), column_of, n_columns)
            yield block

    return _Source([str(v) for v in obs.index], [str(v) for v in var.index], obs, var, blocks)


def _tenx_source(source: Path, handle) -> _Source:
    """Cell Ranger's .h5 streamed by cells: its peaks x cells CSC holds each cell's values contiguously, so a
    block of cells is one slice of `data` and `indices`. Only the "Peaks" features are kept (a Multiome file
    also holds genes), as scatac.read keeps them."""
    from .matrices import _h5_group, _tenx_header

    group = _h5_group(handle)
    for key in ("shape", "barcodes", "data", "indices", "indptr"):
        if key not in group:
            fail(source, f"not a 10x HDF5 matrix: it has no {key!r}")
    n_features, n_cells, barcodes, names, types = _tenx_header(group, source)
    indptr = group["indptr"][()].astype(np.int64)
    indices, data = group["indices"], group["data"]
    if indptr.shape != (n_cells + 1,) or indices.shape != data.shape or indptr[0] != 0 or \
            indptr[-1] > indices.shape[0] or np.any(np.diff(indptr) < 0):
        fail(source, "corrupt sparse matrix: indptr, indices and data do not fit its shape")
    column_of, peaks = None, names
    if types is not None and any(kind != "Peaks" for kind in types):
        keep = np.asarray(types, dtype=object) == "Peaks"
        kinds, counts = np.unique(np.asarray(types, dtype=object)[~keep], return_counts=True)
        aside = ", ".join(f"{n:,} {kind}" for kind, n in zip(kinds, counts))
        if not keep.any():
            fail(source, f"has no 'Peaks' features (it holds {aside} features): not a chromatin accessibility matrix")
        warn(f"{source}: set aside {aside} features, kept the {int(keep.sum()):,} Peaks")
        column_of = np.where(keep, np.cumsum(keep) - 1, -1)
        peaks = [name for name, kept in zip(names, keep) if kept]

    def blocks(block_cells):
        for start in range(0, n_cells, block_cells):
            stop = min(start + block_cells, n_cells)
            lo, hi = indptr[start], indptr[stop]
            features = indices[lo:hi]
            if len(features) and (features.min() < 0 or features.max() >= n_features):
                fail(source, f"corrupt sparse matrix: a feature index lies outside its {n_features} features")
            # CSC peaks x cells is CSR cells x peaks with the same three arrays
            block = sp.csr_matrix((data[lo:hi].astype(np.float32), features, indptr[start:stop + 1] - lo),
                                  shape=(stop - start, n_features))
            if column_of is not None:
                block = select_columns(canonical_rows(block), column_of, len(peaks))
            yield block

    return _Source(barcodes, peaks, None, None, blocks)


class _SourceRows:
    """A streamed source seen as filter_store sees a store: its shape, its path, and its row blocks as (first row,
    checked canonical CSR) pairs, read again from the source at every pass."""

    def __init__(self, plan: _Source, source: Path):
        self._plan = plan
        self.path = source
        self.shape = (len(plan.barcodes), len(plan.peaks))

    def blocks(self, block_cells: int = DEFAULT_BLOCK_CELLS, progress: bool = False):
        from tqdm.auto import tqdm

        first = 0
        with tqdm(total=self.shape[0], desc=f"reading {self.path.name}", unit=" cells", unit_scale=True,
                  disable=not progress, leave=False) as bar:
            for block in self._plan.blocks(block_cells):
                block = _checked_block(block, self.path)
                yield first, block
                first += block.shape[0]
                bar.update(block.shape[0])

    def statistics(self, block_cells: int = DEFAULT_BLOCK_CELLS, progress: bool = False) -> StoreStatistics:
        return block_statistics(self.blocks(block_cells, progress), *self.shape)


def _column_of(peak_mask: np.ndarray) -> np.ndarray:
    """(n_peaks,) each kept peak's column among the kept ones, -1 for the others: select_columns's map."""
    return np.where(peak_mask, np.cumsum(peak_mask) - 1, -1)


def _kept_rows(blocks: Iterable, cell_mask: np.ndarray, peak_mask: np.ndarray) -> Iterator[sp.csr_matrix]:
    """The kept cells' rows, kept peaks only, of (first row, CSR block) pairs: what a filtered store holds."""
    column_of = _column_of(peak_mask)
    n_kept_peaks = int(peak_mask.sum())
    for first, block in blocks:
        keep = cell_mask[first:first + block.shape[0]]
        if not keep.any():
            continue
        block = canonical_rows(block if keep.all() else block[np.flatnonzero(keep)])
        yield block if peak_mask.all() else select_columns(block, column_of, n_kept_peaks)


def _subset(frame, mask):
    return None if frame is None else frame[np.asarray(mask)]


def convert_to_store(source, path, *, block_cells: int = DEFAULT_BLOCK_CELLS, labels=None, label_key: str | None = None,
                     layer: str | None = None, modality: str | None = None, use_selected: bool = False,
                     filter: dict | None = None, progress: bool = True, **read_options) -> Path:
    """Turn any input the suite reads (`scatac.read`) into a store at `path`, streamed where the format allows it.

    Filtered by SCALE's filter when `filter` is given.

    Streamed, `block_cells` cells at a time, never whole: an .h5ad (or an .h5mu modality) whose X (or `layer`) is CSR
    or dense, Cell Ranger's .h5 (peaks x cells CSC: each cell's values are contiguous), and a fragment file (counted in
    two passes into blocks of cells, `scatac.io.fragments.partition_fragments`). Read whole with `scatac.read`, then
    written in blocks: everything else (10x/SCALE folders, Matrix Market files, tables, an .h5ad whose X is CSC).
    Values are checked as `scatac.read` checks them (finite, non-negative, not all zero); the layout, names and labels
    are checked before any block is read, so a broken input fails at once with an InputError naming it. Unlike
    `scatac.read`, the streamed path does not warn about values that look normalized.

    Parameters
    ----------
    source : str or Path
        The input, any layout `scatac.read` takes.
    path : str or Path
        The store to write (see `write_store`: staged beside it, renamed into place when complete).
    block_cells : int
        Cells read and written at a time.
    labels, label_key, layer, modality, use_selected
        As `scatac.read` takes them; the labels become obs["label"].
    filter : dict or None
        `scatac.pp.filter`'s thresholds (min_cells_per_peak, max_cells_per_peak, min_peaks_per_cell, n_top_peaks; those
        left out take its defaults). When given, only the cells and peaks the filter keeps are written: a streamed
        source is read in passes (the one-pass statistics, then `filter_store`'s passes, then the write), one read whole
        is filtered in memory (`scatac.pp.filter_masks`). The filter's summary goes to uns["scatac"]["filter"] and what
        the store was made from (source, read options, labels, thresholds) to uns["scatac"]["store"], which
        `filtered_store` compares before reusing the store.
    progress : bool
        Show a tqdm bar.
    **read_options
        The rest of `scatac.read`'s options (a fragment file's peaks, tile_size, barcodes, min_fragments, counting).

    Returns
    -------
    Path
        The store, whose X is canonical CSR float32 counts (cells x peaks).

    Raises
    ------
    scatac.InputError
        A broken input, named.
    """
    import tempfile

    import h5py

    from ..params import FILTER
    from . import make_unique, read
    from .fragments import is_fragment_input, partition_fragments
    from .labels import read_labels
    from .matrices import _h5_filters

    source, path = Path(source), Path(path)
    if not source.exists():
        fail(source, "no such file or folder")
    if block_cells < 1:
        fail("block_cells", f"must be an integer >= 1, got {block_cells}")
    if source.resolve() == path.resolve():
        fail(path, "is the source itself: write the store to another path")
    thresholds = FILTER.resolve(dict(filter), where="filter") if filter is not None else None
    name = source.name.lower()
    # min_fragments and counting have defaults and apply to fragment files only: the options that make a fragment
    # file of a table are what is read whole
    streamable = source.is_file() and name.endswith((".h5ad", ".h5mu", ".h5", ".hdf5")) and \
        all(read_options.get(option) is None for option in _FRAGMENT_OPTIONS)
    provenance = {"source": str(source)}
    if thresholds is not None:
        provenance["store"] = store_record(source, labels=labels, label_key=label_key, filter=thresholds, layer=layer,
                                           modality=modality, use_selected=use_selected, **read_options)
    handle = None
    stack = contextlib.ExitStack()  # the fragment hits' temporary folder, removed however the write ends
    try:
        plan = None
        if streamable:
            _h5_filters()
            try:
                handle = h5py.File(source, "r")
            except OSError as exc:
                fail(source, f"not a readable HDF5 file ({exc})")
            try:
                if name.endswith((".h5ad", ".h5mu")):
                    plan = _anndata_source(source, layer, modality, use_selected, handle)
                else:
                    for given, flag in ((layer, "--layer"), (modality, "--modality"), (use_selected or None, "--use-selected")):
                        if given is not None:
                            fail(source, f"{flag} applies to AnnData .h5ad and MuData .h5mu files")
                    plan = _tenx_source(source, handle)
            except InputError:
                raise
            except (KeyError, ValueError, TypeError, OSError) as exc:
                fail(source, f"not a readable {'AnnData' if 'h5ad' in name or 'h5mu' in name else '10x HDF5'} file "
                             f"({exc.__class__.__name__}: {exc})".replace("\n", " "))
        elif is_fragment_input(source, read_options.get("peaks"), read_options.get("tile_size")):
            # counted in two passes over the file into a block of cells at a time, never the whole matrix
            for given, flag in ((layer, "--layer"), (modality, "--modality"), (use_selected or None, "--use-selected")):
                if given is not None:
                    fail(source, f"{flag} applies to AnnData .h5ad and MuData .h5mu files")
            if not path.parent.is_dir():
                fail(path, f"folder {path.parent} does not exist")
            hits = stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{path.name}.hits-", dir=path.parent))
            cells, features, notes, blocks = partition_fragments(source, hits, block_cells=block_cells,
                                                                 progress=progress, **read_options)
            for note in notes if progress else ():  # as scatac.read says them (verbose)
                info(note)
            plan = _Source(cells, features, None, None, lambda _: blocks())
        if plan is None:  # read whole, then written in blocks
            adata = read(source, labels=labels, label_key=label_key, layer=layer, modality=modality,
                         use_selected=use_selected, verbose=progress, **read_options)
            X = adata.X
            every_row = ((start, X[start:start + block_cells]) for start in range(0, X.shape[0], block_cells))
            if thresholds is None:
                return write_store((block for _, block in every_row), path, barcodes=list(adata.obs_names),
                                   peaks=list(adata.var_names), obs=adata.obs, var=adata.var,
                                   uns={"scatac": provenance}, progress=progress)
            from ..pp import filter_masks

            cell_mask, peak_mask, provenance["filter"] = filter_masks(X, **thresholds, source=source)
            return write_store(_kept_rows(every_row, cell_mask, peak_mask), path,
                               barcodes=list(adata.obs_names[cell_mask]), peaks=list(adata.var_names[peak_mask]),
                               obs=adata.obs[cell_mask], var=adata.var[peak_mask], uns={"scatac": provenance},
                               progress=progress)
        barcodes = plan.barcodes
        label_values = read_labels(barcodes, labels, plan.obs, label_key, source=source)
        if len(set(barcodes)) != len(barcodes):
            barcodes, n_changed = make_unique(barcodes)
            warn(f"{source}: {n_changed} duplicate barcodes made unique by appending '-1', '-2', ...")
        if thresholds is not None:
            return _write_filtered(_SourceRows(plan, source), path, thresholds, provenance, barcodes=barcodes,
                                   peaks=plan.peaks, obs=plan.obs, var=plan.var, labels=label_values,
                                   block_cells=block_cells, progress=progress)
        nnz = 0

        def checked_blocks():
            nonlocal nnz
            for block in plan.blocks(block_cells):
                block = _checked_block(block, source)
                nnz += block.nnz
                yield block
            if nnz == 0:
                fail(source, "matrix has no non-zero entries")

        return write_store(checked_blocks(), path, barcodes=barcodes, peaks=plan.peaks, obs=plan.obs, var=plan.var,
                           labels=label_values, uns={"scatac": provenance}, progress=progress)
    finally:
        stack.close()
        if handle is not None:
            handle.close()


def _write_filtered(rows: _SourceRows, path: Path, thresholds: dict, provenance: dict, *, barcodes, peaks, obs, var,
                    labels, block_cells: int, progress: bool) -> Path:
    """The kept cells and peaks of a streamed source written as a store: the filter decided in passes over the
    source's blocks (as over a store's), then one more pass writing what it keeps."""
    statistics = rows.statistics(block_cells, progress)
    if not statistics.cells_per_peak.any():
        fail(rows.path, "matrix has no non-zero entries")
    cell_mask, peak_mask, provenance["filter"] = filter_store(rows, **thresholds, statistics=statistics,
                                                              block_cells=block_cells, progress=progress)
    return write_store(_kept_rows(rows.blocks(block_cells), cell_mask, peak_mask), path,
                       barcodes=[b for b, kept in zip(barcodes, cell_mask) if kept],
                       peaks=[p for p, kept in zip(peaks, peak_mask) if kept], obs=_subset(obs, cell_mask),
                       var=_subset(var, peak_mask), labels=None if labels is None else np.asarray(labels)[cell_mask],
                       uns={"scatac": provenance}, progress=progress)


# ---- a filtered store that a run writes once and later runs reuse (the scripts' --store) --------------------------

_FRAGMENT_OPTIONS = ("peaks", "tile_size", "barcodes")  # the options that make a file be counted as fragments


def _absolute(value):
    return str(Path(value).resolve()) if value is not None else None


def _source_stamp(source: Path) -> str:
    """A file's size and modification time, so that a store of a file rewritten since is not taken for current;
    "" for a folder (its files are not listed: a folder holds other things than the counts, labels among them)."""
    if not source.is_file():
        return ""
    from datetime import datetime

    status = source.stat()
    return f"{status.st_size} bytes, modified {datetime.fromtimestamp(status.st_mtime_ns / 1e9).isoformat()}"


def store_record(source, *, labels=None, label_key: str | None = None, filter: dict, **read_options) -> dict:
    """What a filtered store was made from, as it is kept in its uns["scatac"]["store"]: {"source": the input's
    absolute path, "input": JSON text of the file's size and time, the labels and the read options, "thresholds":
    JSON text of the filter's thresholds}.

    Thresholds left out of `filter` are pp.filter's defaults. JSON text because h5ad would not keep what tells two
    records apart: None (n_top_peaks) and 1 against 1.0 (a threshold of one cell against all cells). Fragment-file
    options are recorded only where they apply (a fragment file, one of `peaks`, `tile_size`, `barcodes` given), so
    their defaults do not tie other inputs' stores.
    """
    import json

    from ..params import FILTER, READ

    unknown = sorted(set(read_options) - set(READ.params))
    if unknown:
        raise TypeError(f"unknown read option {unknown[0]!r}")
    source = Path(source)
    fragments = any(read_options.get(option) is not None for option in _FRAGMENT_OPTIONS)
    options = {}
    for option in READ.params:  # an option left out is its default, as scatac.read takes it
        if option != "label_key" and (option in ("layer", "modality", "use_selected") or fragments):
            value = read_options.get(option, READ[option].default)
            options[option] = _absolute(value) if option in ("peaks", "barcodes") else value
    given = {"source_file": _source_stamp(source), "labels": _absolute(labels), "label_key": label_key, **options}
    return {"source": str(source.resolve()), "input": json.dumps(given, sort_keys=True),
            "thresholds": json.dumps(FILTER.resolve(dict(filter), where="filter"), sort_keys=True)}


def _read_record(path: Path) -> dict | None:
    """uns["scatac"]["store"] of the file at `path`, or None when it holds none (not written with a filter, not an
    AnnData file, not HDF5)."""
    import h5py

    # through h5py alone: a refusal here comes before any heavy import, as every input error does
    try:
        if not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as handle:
            group = handle.get("uns/scatac/store")
            if not isinstance(group, h5py.Group):
                return None
            return {key: group[key].asstr()[()] for key in group if isinstance(group[key], h5py.Dataset)}
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _differences(stored: dict, wanted: dict) -> list:
    """What differs between two store records, in words, one entry per difference."""
    import json

    def words(value):
        # 1 and 1.0 as they differ (one cell against all cells)
        return "none" if value is None else value if isinstance(value, str) else json.dumps(value)

    found = []
    same_source = stored.get("source") == wanted["source"]
    if not same_source:
        found.append(f"written from {stored.get('source')}, not {wanted['source']}")
    for part in ("input", "thresholds"):
        before, now = json.loads(stored.get(part, "{}")), json.loads(wanted[part])
        for key in sorted(set(before) | set(now)):
            # json.dumps tells 1 from 1.0 where == would not
            if json.dumps(before.get(key)) == json.dumps(now.get(key)) or (key == "source_file" and not same_source):
                continue
            if key == "source_file":
                found.append(f"the source changed since it was written ({words(before.get(key))}, now "
                             f"{words(now.get(key))})")
            else:
                found.append(f"{key} {words(before.get(key))} (this run: {words(now.get(key))})")
    return found


def check_store_path(path, source, *, outdir=None, labels=None, label_key: str | None = None, filter: dict,
                     **read_options) -> Path:
    """Refuse, before any work, a store path that cannot be written or that holds another input's store.

    A store made from something else than this run's input and filter is what `filtered_store` would refuse after
    reading the input.

    Parameters
    ----------
    path : str or Path
        The store's path (a file; its folder must exist).
    source : str or Path
        The run's input.
    outdir : str, Path or None
        The run's output folder, replaced as a whole by every run (the store may not lie inside it).
    labels, label_key, filter, **read_options
        As `filtered_store` takes them.

    Returns
    -------
    Path
        The store's path.

    Raises
    ------
    scatac.InputError
        Naming `path` and what is wrong.
    """
    import os

    from ..files import PROTECTED

    if str(path).strip() == "":
        fail("--store", "no path given")
    path = Path(path)
    resolved = path.resolve()
    if any(resolved == Path(p) or Path(p) in resolved.parents for p in PROTECTED):
        fail(path, "is inside a kernel file system: choose a file on a disk")
    if path.is_dir():
        fail(path, "is a folder; --store takes the path of a file to write the store to (e.g. data.store.h5ad)")
    if outdir is not None and Path(outdir).resolve() in resolved.parents:
        fail(path, f"lies inside the output folder {outdir}, which every run replaces as a whole: put the store "
                   "elsewhere")
    if not path.parent.is_dir():
        fail(path, f"folder {path.parent} does not exist")
    if Path(source).exists() and resolved == Path(source).resolve():
        fail(path, "is the input itself: give the store another path")
    if path.exists():
        _check_reusable(path, store_record(source, labels=labels, label_key=label_key, filter=filter, **read_options))
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        fail(path, f"cannot be written: no write permission in {path.parent} (or a read-only file system)")
    return path


def _check_reusable(path: Path, wanted: dict):
    stored = _read_record(path)
    if stored is None:
        fail(path, "exists and is not a store written by --store (it records no source and filter): not replacing "
                   "it; give another --store path")
    different = _differences(stored, wanted)
    if different:
        fail(path, "holds a store made from something else: " + "; ".join(different) + ". Give another --store path, "
                   "or remove this store to write it anew")


def filtered_store(path, source, *, labels=None, label_key: str | None = None, filter: dict,
                   block_cells: int = DEFAULT_BLOCK_CELLS, progress: bool = True, **read_options) -> tuple[Path, bool]:
    """The store at `path` of the cells and peaks of `source` that the filter keeps, written or found there.

    Written (`convert_to_store` with `filter`) unless a store made from the same source, read options, labels and
    thresholds is there already.

    What the method scripts' and compare.py's `--store` run. An existing file made from anything else (another input,
    filter, labels; a source file changed since; not a store) is refused: a store is never overwritten. Runs that ask
    for the same store at once write it once: each waits for the one writing it (a lock file beside it), then reuses
    it.

    Parameters
    ----------
    path : str or Path
        The store (its folder must exist).
    source : str or Path
        The input, any layout `scatac.read` takes.
    labels, label_key
        The cell types, as `scatac.read` takes them (obs["label"] of the store).
    filter : dict
        `scatac.pp.filter`'s thresholds (those left out take their defaults).
    block_cells, progress, **read_options
        As `convert_to_store` takes them.

    Returns
    -------
    path : Path
        The store.
    reused : bool
        True when the store was there already (saying which is the caller's).

    Raises
    ------
    scatac.InputError
        Naming `path` and what differs.
    """
    from ..params import FILTER

    path = Path(path)
    thresholds = FILTER.resolve(dict(filter), where="filter")
    wanted = store_record(source, labels=labels, label_key=label_key, filter=thresholds, **read_options)
    with _store_lock(path):
        if path.exists():
            _check_reusable(path, wanted)
            return path, True
        convert_to_store(source, path, labels=labels, label_key=label_key, filter=thresholds, block_cells=block_cells,
                         progress=progress, **read_options)
        return path, False


def store_keywords(settings, labels=None) -> dict:
    """check_store_path's and filtered_store's keywords from a run's checked options (`settings`: every name of
    params.READ and params.FILTER, as a script or compare.py resolves them) and its labels file."""
    from ..params import FILTER, READ

    return {"labels": labels, "filter": {name: settings[name] for name in FILTER.params},
            **{name: settings[name] for name in READ.params}}


def prepare_store(path, source, **keywords) -> tuple[float, str]:
    """A command's store: `filtered_store`, with a bar only on a terminal (a captured log keeps one line an
    error), timed. Returns (seconds, the line saying whether the store was written or reused), the line for the
    caller to print once the kept cells pass its own checks, so that an error there is still the only line."""
    import sys
    import time

    started = time.perf_counter()
    path, reused = filtered_store(path, source, progress=sys.stderr.isatty(), **keywords)
    spent = time.perf_counter() - started
    if reused:
        return spent, f"reusing store {path} (written from {source} with the same filter)"
    return spent, f"wrote store {path}: the cells and peaks of {source} that the filter keeps, in {spent:.1f}s"


def read_backed(path):
    """A store as a backed AnnData, its filter summary as Python ints.

    `anndata.read_h5ad(path, backed="r")`: obs, var and uns in memory, X on disk. The filter summary
    (`uns["scatac"]["filter"]`) is made of Python ints, as `scatac.pp.filter` records it in memory, so that the records
    written from either (run.json) hold numbers alike.

    Parameters
    ----------
    path : str or Path
        The store.

    Returns
    -------
    AnnData
        Backed, read-only.
    """
    import anndata

    adata = anndata.read_h5ad(path, backed="r")
    provenance = adata.uns.get("scatac", {})
    if "filter" in provenance:
        provenance["filter"] = {name: int(value) for name, value in provenance["filter"].items()}
    return adata


@contextlib.contextmanager
def _store_lock(path: Path):
    """Hold `path` for writing: an flock on `.<name>.lock` beside it, which the kernel drops when the process ends
    however it ends. A run that finds another holding it waits (saying so once), and then finds the store written.
    The lock file is removed before the lock is released; a lock taken on a file another run has just removed is
    taken again. Where no lock file can be made (a read-only folder, no flock) nothing is held: only an existing
    store can be read there."""
    import os

    try:
        import fcntl
    except ImportError:
        fcntl = None
    lock_path = path.parent / f".{path.name}.lock"
    fd = None
    if fcntl is not None:
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                info(f"{path}: another run (process {holder}) is writing this store; waiting for it")
                fcntl.flock(fd, fcntl.LOCK_EX)
            if lock_path.exists() and os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
            os.close(fd)
            fd = None
    try:
        if fd is not None:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            os.close(fd)


__all__ = ["StoredCounts", "StoreStatistics", "open_store", "write_store", "convert_to_store", "filtered_store",
           "filter_store", "block_statistics", "check_store_path", "read_backed"]
