"""Preprocessing: drop rare peaks and near-empty cells, and scale counts for a model's input.

Matrices are scipy CSR, cells x peaks; nothing here densifies a whole matrix, and the transforms
keep the counts' sparsity pattern (the autoencoders read their binary target off it).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import fail, info
from .params import FILTER, TRANSFORMS


def _as_count(value, total):
    """A threshold below 1 (or exactly 1.0) is a fraction of `total`; otherwise a count."""
    return value * total if value < 1 or (value == 1 and isinstance(value, float)) else value


def _open_per_cell(X: sp.csr_matrix, peak_mask: np.ndarray) -> np.ndarray:
    """Open peaks of `peak_mask` per cell, counted without X[:, peaks]'s copy of the matrix."""
    so_far = np.zeros(X.nnz + 1, dtype=np.int32 if X.nnz < 2**31 else np.int64)
    np.cumsum(peak_mask[X.indices], out=so_far[1:])
    return (so_far[X.indptr[1:]] - so_far[X.indptr[:-1]]).astype(np.int64)


def filter_decision(shape, cells_per_peak, keep_cells, open_per_cell, min_cells_per_peak=3, max_cells_per_peak=1.0,
                    min_peaks_per_cell=10, n_top_peaks=None, source="adata"):
    """SCALE's filter decided from counts its caller makes: (cell_mask, peak_mask, summary), as `filter_masks`
    describes. Shared by `filter_masks` (a matrix in memory) and streamed.filter_store (passes over a store).

    shape : (n_cells, n_peaks). cells_per_peak : (n_peaks,) cells opening each peak.
    keep_cells(peak_mask, threshold) -> (cell_mask, open_in_kept): the cells with at least `threshold` open peaks
        among `peak_mask`, and the cells among those opening each peak, (n_peaks,) ints.
    open_per_cell(peak_mask) -> (n_cells,) ints: each cell's open peaks among `peak_mask` (asked only when
        `n_top_peaks` drops peaks, for the cells left with none of the top ones).
    """
    n_cells, n_peaks = shape
    low = _as_count(min_cells_per_peak, n_cells)
    high = _as_count(max_cells_per_peak, n_cells)
    peak_mask = (cells_per_peak >= low) & (cells_per_peak <= high)
    cell_mask, open_in_kept = keep_cells(peak_mask, _as_count(min_peaks_per_cell, max(int(peak_mask.sum()), 1)))
    if cell_mask.sum() == 0 or peak_mask.sum() == 0:
        fail(source, f"nothing left after filtering ({int(cell_mask.sum())} cells x {int(peak_mask.sum())} peaks kept of "
                     f"{n_cells} x {n_peaks}); lower --min-cells-per-peak / --min-peaks-per-cell")
    # peaks that only the dropped cells opened carry nothing
    still_open = open_in_kept > 0
    in_range = peak_mask.copy()
    peak_mask &= still_open
    if peak_mask.sum() < 2:
        fail(source, f"only {int(peak_mask.sum())} peak left after filtering; lower --min-cells-per-peak")
    not_top = 0
    if n_top_peaks is not None and peak_mask.sum() > n_top_peaks:
        order = np.argsort(-np.where(peak_mask, open_in_kept, -1), kind="stable")
        top = np.zeros(n_peaks, dtype=bool)
        top[order[:n_top_peaks]] = True
        not_top = int(peak_mask.sum() - n_top_peaks)
        peak_mask &= top
    cells_before_top = int(cell_mask.sum())
    if not_top:
        cell_mask &= open_per_cell(peak_mask) > 0
    summary = {
        "cells_before": n_cells,
        "peaks_before": n_peaks,
        "cells_after": int(cell_mask.sum()),
        "peaks_after": int(peak_mask.sum()),
        "cells_dropped_few_peaks": int(n_cells - cell_mask.sum()),
        "peaks_dropped_rare": int((cells_per_peak < low).sum()),
        "peaks_dropped_common": int((cells_per_peak > high).sum()),
        "peaks_dropped_empty_after_cell_filter": int((~still_open & in_range).sum()),
        "peaks_dropped_not_top": not_top,
        "cells_dropped_no_top_peak": cells_before_top - int(cell_mask.sum()),
    }
    return cell_mask, peak_mask, summary


def filter_masks(X: sp.csr_matrix, min_cells_per_peak=3, max_cells_per_peak=1.0, min_peaks_per_cell=10,
                 n_top_peaks=None, source="adata"):
    """Which cells and peaks SCALE's filter keeps, counted on X's structure without a copy of the matrix.

    Peaks are kept when open in at least `min_cells_per_peak` and at most `max_cells_per_peak` cells, then cells with
    at least `min_peaks_per_cell` open peaks among those; peaks that only the dropped cells opened go too. With
    `n_top_peaks`, only that many of the kept peaks stay, those open in the most kept cells (ties: the first in the
    file), and cells left with no open peak go.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        Counts, (n_cells, n_peaks), canonical (as `scatac.read` gives them).
    min_cells_per_peak : float
        Keep peaks open in at least this many cells; below 1, a fraction of the cells.
    max_cells_per_peak : float
        Keep peaks open in at most this many cells; at most 1.0, a fraction (1.0 keeps all).
    min_peaks_per_cell : float
        Keep cells with at least this many open peaks among the kept peaks; below 1, a fraction of those peaks.
    n_top_peaks : int or None
        Keep only this many peaks, those open in the most kept cells; None keeps all.
    source : str
        What an error names.

    Returns
    -------
    cell_mask : numpy.ndarray
        (n_cells,) bool, the cells kept.
    peak_mask : numpy.ndarray
        (n_peaks,) bool, the peaks kept.
    summary : dict
        cells_before, peaks_before, cells_after, peaks_after, and why each went: cells_dropped_few_peaks,
        peaks_dropped_rare, peaks_dropped_common, peaks_dropped_empty_after_cell_filter, peaks_dropped_not_top,
        cells_dropped_no_top_peak.

    Raises
    ------
    scatac.InputError
        Nothing (or a single peak) left.
    """
    n_peaks = X.shape[1]

    def keep_cells(peak_mask, threshold):
        cell_mask = _open_per_cell(X, peak_mask) >= threshold
        open_in_kept = np.bincount(X.indices[np.repeat(cell_mask, np.diff(X.indptr))], minlength=n_peaks)
        return cell_mask, open_in_kept

    return filter_decision(X.shape, np.bincount(X.indices, minlength=n_peaks), keep_cells,
                           lambda peak_mask: _open_per_cell(X, peak_mask), min_cells_per_peak, max_cells_per_peak,
                           min_peaks_per_cell, n_top_peaks, source)


def filter(adata, min_cells_per_peak=3, max_cells_per_peak=1.0, min_peaks_per_cell=10, n_top_peaks=None,
           verbose: bool = True) -> dict:
    """Filter `adata` in place with SCALE's filter, as scanpy's filter_cells and filter_genes do.

    Peaks open in too few (or too many) cells go, then cells with too few open peaks among those, then peaks only the
    dropped cells opened: see `filter_masks`. Thresholds below 1 are fractions (of the cells, or of the peaks kept).

    Parameters
    ----------
    adata : AnnData
        Counts, cells x peaks, in memory (a backed AnnData is refused: filter when writing the store).
    min_cells_per_peak : float
        Keep peaks open in at least this many cells (default 3, as SCALE).
    max_cells_per_peak : float
        Keep peaks open in at most this many cells (default 1.0: all).
    min_peaks_per_cell : float
        Keep cells with at least this many open peaks (default 10).
    n_top_peaks : int or None
        After filtering, keep only the N peaks open in the most cells (SCALE's n_feature); None keeps all.
    verbose : bool
        Print the summary as one line on stderr.

    Returns
    -------
    dict
        The filter's summary: cells and peaks before and after, and why each went (`filter_masks`).

    Writes
    ------
    adata
        Subset to the kept cells and peaks, in place.
    uns["scatac"]["filter"]
        The summary.

    Raises
    ------
    scatac.InputError
        A threshold that breaks its rule, a backed AnnData, or nothing left.
    """
    values = FILTER.resolve(dict(min_cells_per_peak=min_cells_per_peak, max_cells_per_peak=max_cells_per_peak,
                                 min_peaks_per_cell=min_peaks_per_cell, n_top_peaks=n_top_peaks), where="filter")
    if getattr(adata, "isbacked", False):
        fail("adata", f"is backed by the on-disk store {adata.filename}: pp.filter subsets a matrix in memory; a store "
                      "is trained on as written (scatac.streamed.filter_store gives its filter's masks in passes)")
    provenance = adata.uns.setdefault("scatac", {})
    cell_mask, peak_mask, summary = filter_masks(adata.X, **values, source=provenance.get("source", "adata"))
    # one copy of the matrix at a time: old and new coexist only within each step
    if not cell_mask.all():
        adata._inplace_subset_obs(cell_mask)
    if not peak_mask.all():
        adata._inplace_subset_var(peak_mask)
    provenance = adata.uns.setdefault("scatac", {})  # subsetting rebuilt uns
    provenance["filter"] = summary
    if verbose:
        info(filter_message(summary, values))
    return summary


def filter_message(summary: dict, thresholds: dict) -> str:
    """The filter's summary as one line."""
    return (f"filter: kept {summary['cells_after']} of {summary['cells_before']} cells x {summary['peaks_after']} of "
            f"{summary['peaks_before']} peaks (dropped {summary['cells_dropped_few_peaks']} cells with < "
            f"{thresholds['min_peaks_per_cell']:g} open peaks; {summary['peaks_dropped_rare']} peaks open in < "
            f"{thresholds['min_cells_per_peak']:g} cells, {summary['peaks_dropped_common']} in > "
            f"{thresholds['max_cells_per_peak']:g}"
            + (f"; {summary['peaks_dropped_not_top']} not among the {thresholds['n_top_peaks']} most often open, "
               f"then {summary['cells_dropped_no_top_peak']} cells with none of those"
               if thresholds.get("n_top_peaks") and summary.get("peaks_dropped_not_top") else "") + ")")


TFIDF_BLOCK_NNZ = 1 << 21  # non-zeros per block of tfidf's and idf's temporaries


def stored_nonzero(X) -> sp.csr_matrix:
    """X as canonical CSR whose every stored value is non-zero, so that its sparsity pattern is exactly the open peaks.

    Parameters
    ----------
    X : scipy.sparse matrix or array
        (n_cells, n_peaks) counts.

    Returns
    -------
    scipy.sparse.csr_matrix
        X itself when it already is so (what `scatac.read` gives); a cleaned copy otherwise, never a change to the
        caller's matrix.
    """
    if not (sp.issparse(X) and X.format == "csr" and X.has_canonical_format):
        X = sp.csr_matrix(X, copy=True)
        X.sum_duplicates()
    if X.nnz and not np.all(X.data != 0):
        X = X.copy()
        X.eliminate_zeros()
    return X


def binarize(X: sp.csr_matrix) -> sp.csr_matrix:
    """1 where X is non-zero.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts.

    Returns
    -------
    scipy.sparse.csr_matrix
        (n_cells, n_peaks) float32 ones. Shares the indices and indptr of a canonical X instead of copying them, which
        matters at atlas size.
    """
    X = stored_nonzero(X)
    return sp.csr_matrix((np.ones(X.nnz, dtype=np.float32), X.indices, X.indptr), shape=X.shape, copy=False)


def _peak_frequency(X: sp.csr_matrix) -> np.ndarray:
    """Cells opening each peak (X's stored non-zeros), float64 (n_peaks,)."""
    return np.bincount(X.indices, minlength=X.shape[1]).astype(np.float64)


def _weighted_rows(X: sp.csr_matrix, value, l2_normalize: bool) -> sp.csr_matrix:
    """A matrix with X's sparsity pattern whose non-zeros are value(peaks, rows) (arrays of one block's peak and
    cell indices), each cell's row then L2-normalized if asked.

    Computed in row blocks of about TFIDF_BLOCK_NNZ non-zeros: float64 temporaries per non-zero over the
    whole matrix were ~4 CSR copies at once. The result shares X's indices and indptr when X is
    canonical: one float32 per non-zero is all it adds (bench/scale.py, 100k x 100k).
    """
    n_cells = X.shape[0]
    data = np.empty(X.nnz, dtype=np.float32)
    block_rows = max(1, int(TFIDF_BLOCK_NNZ * n_cells / max(X.nnz, 1)))
    for start in range(0, n_cells, block_rows):
        stop = min(start + block_rows, n_cells)
        lo, hi = X.indptr[start], X.indptr[stop]
        lengths = np.diff(X.indptr[start : stop + 1])
        row_of = np.repeat(np.arange(start, stop), lengths)
        block = value(X.indices[lo:hi], row_of)
        if l2_normalize:
            # whole rows lie in the block, so their norms are complete here
            norms = np.sqrt(np.bincount(row_of - start, weights=block * block, minlength=stop - start))
            block /= np.repeat(np.maximum(norms, 1e-12), lengths)
        data[lo:hi] = block
    return sp.csr_matrix((data, X.indices, X.indptr), shape=X.shape, copy=False)


def tfidf(X: sp.csr_matrix, l2_normalize: bool = True) -> sp.csr_matrix:
    """Signac's and ArchR's TF-IDF of the binarized counts: log1p(TF x IDF x 1e4), rows L2-normalized.

    TF is a cell's share of its open peaks (1 / its open peaks), IDF = n_cells / cells opening the peak. The
    autoencoders' default input.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts.
    l2_normalize : bool
        L2-normalize each cell's row (False: Signac's matrix as LSI takes it).

    Returns
    -------
    scipy.sparse.csr_matrix
        (n_cells, n_peaks) float32, X's sparsity pattern; computed in row blocks, it adds one float32 per non-zero.
    """
    X = stored_nonzero(X)
    depth = np.diff(X.indptr)  # open peaks per cell: every stored value is non-zero
    idf = X.shape[0] / np.maximum(_peak_frequency(X), 1)
    return _weighted_rows(X, lambda peaks, rows: np.log1p(1e4 * idf[peaks] / depth[rows]), l2_normalize)


def idf(X: sp.csr_matrix, l2_normalize: bool = True) -> sp.csr_matrix:
    """The binarized counts weighted by each peak's inverse document frequency, rows L2-normalized.

    The weight is log(n_cells / cells opening the peak): SnapATAC2's feature weighting for its spectral embedding, and
    the default input of NMF and LSNMF. Unlike `tfidf`, the IDF is not inside a log with the cell's depth, so rare peaks
    weigh far more. A peak open in every cell weighs 0 but stays stored: the pattern, which the autoencoders read their
    target off, is X's. Why it is the factorizations' default: the benchmarks page of the documentation
    ("Input transform").

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts.
    l2_normalize : bool
        L2-normalize each cell's row.

    Returns
    -------
    scipy.sparse.csr_matrix
        (n_cells, n_peaks) float32, X's sparsity pattern.
    """
    X = stored_nonzero(X)
    weight = np.log(X.shape[0] / np.maximum(_peak_frequency(X), 1))
    return _weighted_rows(X, lambda peaks, rows: weight[peaks], l2_normalize)


def transform(X: sp.csr_matrix, kind: str) -> sp.csr_matrix:
    """Scale counts for a model's input; the result keeps X's sparsity pattern.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts.
    kind : {'binary', 'tfidf', 'idf', 'log', 'maxabs'}
        'binary': 1 where open; 'tfidf': see `tfidf`; 'idf': see `idf`; 'log': log1p(counts); 'maxabs': counts scaled
        per peak by scikit-learn's MaxAbsScaler (the original suite's input).

    Returns
    -------
    scipy.sparse.csr_matrix
        (n_cells, n_peaks) float32.

    Raises
    ------
    ValueError
        An unknown kind.
    """
    if kind == "binary":
        return binarize(X)
    if kind == "tfidf":
        return tfidf(X)
    if kind == "idf":
        return idf(X)
    if kind == "log":
        out = X.copy()
        out.data = np.log1p(out.data).astype(np.float32)
        return out
    if kind == "maxabs":
        from sklearn.preprocessing import MaxAbsScaler

        return sp.csr_matrix(MaxAbsScaler().fit_transform(X), dtype=np.float32)
    raise ValueError(f"unknown transform {kind!r}; allowed: {', '.join(TRANSFORMS)}")


def peak_weights(kind: str, cells_per_peak: np.ndarray, n_cells: int, peak_max: np.ndarray | None = None):
    """The per-peak half of `transform`, fitted on statistics of all cells.

    What `transform_rows` then applies to any block of rows, so that a matrix too large to hold is transformed a
    block at a time.

    Parameters
    ----------
    kind : str
        A transform (`scatac.params.TRANSFORMS`).
    cells_per_peak : numpy.ndarray
        (n_peaks,) integer, cells in which each peak holds a non-zero value (np.bincount of a canonical X's indices;
        `scatac.io.store.StoreStatistics.cells_per_peak`).
    n_cells : int
        The cells those counts are over.
    peak_max : numpy.ndarray or None
        (n_peaks,) each peak's largest absolute value; needed by 'maxabs' only.

    Returns
    -------
    numpy.ndarray or None
        (n_peaks,) float64, or None for the row-local kinds (binary, log): tfidf's IDF, n_cells / cells opening the
        peak; idf's weight, the log of that; maxabs's scale, the peak's largest absolute value (`transform_rows`
        divides by it as scikit-learn's MaxAbsScaler does, a never-open peak by 1).

    Raises
    ------
    ValueError
        An unknown kind, or 'maxabs' without `peak_max`.
    """
    if kind in ("binary", "log"):
        return None
    frequency = np.asarray(cells_per_peak).astype(np.float64)  # as _peak_frequency counts it
    if kind == "tfidf":
        return n_cells / np.maximum(frequency, 1)
    if kind == "idf":
        return np.log(n_cells / np.maximum(frequency, 1))
    if kind == "maxabs":
        if peak_max is None:
            raise ValueError("maxabs needs each peak's largest absolute value (peak_max)")
        return np.asarray(peak_max, dtype=np.float64)
    raise ValueError(f"unknown transform {kind!r}; allowed: {', '.join(TRANSFORMS)}")


def transform_rows(X: sp.csr_matrix, kind: str, weights: np.ndarray | None) -> sp.csr_matrix:
    """The per-row half of `transform`: rows of counts scaled with `peak_weights` fitted on all cells.

    Every kind is row-local given the weights, so `transform_rows(X, kind, peak_weights(kind, <statistics of X>))`
    equals `transform(X, kind)` value for value, and the rows of a block come out as the same rows of the whole
    matrix would.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (rows, n_peaks), any block of a matrix's rows.
    kind : str
        A transform (`scatac.params.TRANSFORMS`).
    weights : numpy.ndarray or None
        `peak_weights(kind, ...)` of the whole matrix (None for binary and log).

    Returns
    -------
    scipy.sparse.csr_matrix
        (rows, n_peaks) float32 with the pattern `transform` gives (stored zeros dropped for binary, tfidf and idf;
        kept for log and maxabs, as there).

    Raises
    ------
    ValueError
        An unknown kind, or weights missing where the kind needs them.
    """
    if kind == "binary":
        return binarize(X)
    if kind in ("tfidf", "idf"):
        if weights is None:
            raise ValueError(f"{kind} needs peak_weights fitted on all cells")
        X = stored_nonzero(X)
        if kind == "idf":
            return _weighted_rows(X, lambda peaks, rows: weights[peaks], True)
        depth = np.diff(X.indptr)  # open peaks per cell, as tfidf counts them
        return _weighted_rows(X, lambda peaks, rows: np.log1p(1e4 * weights[peaks] / depth[rows]), True)
    if kind == "log":
        out = X.copy()
        out.data = np.log1p(out.data).astype(np.float32)
        return out
    if kind == "maxabs":
        if weights is None:
            raise ValueError("maxabs needs peak_weights fitted on all cells")
        # MaxAbsScaler's steps, in X's floating type (float64 for integer counts) as it computes them
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        scale = weights.astype(dtype)
        scale[scale < 10 * np.finfo(dtype).eps] = 1.0  # its _handle_zeros_in_scale
        out = sp.csr_matrix(X, dtype=dtype, copy=True)
        out.data *= (1.0 / scale).take(out.indices, mode="clip")
        return sp.csr_matrix(out, dtype=np.float32)
    raise ValueError(f"unknown transform {kind!r}; allowed: {', '.join(TRANSFORMS)}")


def reference_neighbors(X: sp.csr_matrix, n_components: int = 10, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """Each cell's nearest other cells under SnapATAC2's geometry: what the autoencoders' neighbour term pairs it with.

    The binarized counts weighted by `idf` (rows L2-normalized), a randomized truncated SVD to `n_components` scores
    weighted by their singular values (U S), each cell's scores L2-normalized (cosine geometry), then exact Euclidean
    neighbours (scikit-learn's trees, so never an (n_cells, n_cells) matrix).

    Parameters
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts.
    n_components : int
        SVD components (the code's dimensions, in the autoencoders).
    n_neighbors : int
        Neighbours per cell, the cell itself not counted.
    seed : int
        The randomized SVD's random state.

    Returns
    -------
    numpy.ndarray
        (n_cells, n_neighbors) int64, the cell itself left out (fewer columns where there are fewer other cells).
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.neighbors import NearestNeighbors

    weighted = idf(X)
    n_components = max(1, min(n_components, min(weighted.shape) - 1))
    scores = TruncatedSVD(n_components=n_components, algorithm="randomized", n_iter=7,
                          random_state=seed).fit_transform(weighted)
    scores /= np.maximum(np.linalg.norm(scores, axis=1, keepdims=True), 1e-12)
    n_neighbors = int(min(n_neighbors, X.shape[0] - 1))
    if n_neighbors < 1:
        return np.zeros((X.shape[0], 0), dtype=np.int64)
    found = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(scores).kneighbors(scores, return_distance=False)
    # the cell itself is its own nearest neighbour except between identical cells: drop it, else the farthest
    is_self = found == np.arange(X.shape[0])[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), n_neighbors)
    keep = np.ones_like(found, dtype=bool)
    keep[np.arange(X.shape[0]), drop] = False
    return found[keep].reshape(X.shape[0], n_neighbors).astype(np.int64)


__all__ = ["filter", "filter_masks", "transform", "binarize", "tfidf", "idf", "peak_weights", "transform_rows",
           "stored_nonzero", "reference_neighbors"]
