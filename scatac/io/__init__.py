"""Reading every input layout into an AnnData of counts (cells x peaks, CSR float32), with labels;
writing the 10x layout back.

Layouts: a 10x/SCALE folder (matrix.mtx[.gz] + peaks + barcodes), a path to the .mtx itself, Cell
Ranger's .h5 (a Multiome file's Peaks only), an AnnData .h5ad or a MuData .h5mu modality, a dense peaks x cells
table (.txt/.tsv/.csv, plain or compressed).
Every file is checked before the AnnData is built, so a broken input is one InputError naming it, early:
text.py reads text as users have it, matrices.py each layout, labels.py the labels.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import info, warn
from ..files import atomic_path, write_text
from .labels import read_labels
from .matrices import Matrix, peek_shape, read_matrix
from .store import convert_to_store, open_store, write_store  # on-disk stores read in blocks (atlas scale)

__all__ = ["read", "read_matrix", "read_labels", "peek_shape", "make_unique", "write_10x", "Matrix",
           "convert_to_store", "open_store", "write_store"]


def make_unique(names: Sequence[str]) -> tuple[list, int]:
    """anndata's obs_names_make_unique: the second 'x' becomes 'x-1', the third 'x-2', and so on.

    Parameters
    ----------
    names : sequence of str
        The names, in order.

    Returns
    -------
    names : list of str
        The names made unique, in the same order (a new name never collides with an existing one).
    n_changed : int
        How many were renamed.
    """
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


# obs columns where scanpy (calculate_qc_metrics; older versions n_counts) and Signac (converted to .h5ad) keep each
# cell's total count. A 0/1 X whose cells sum to clearly less than those totals was binarized after they were taken.
TOTAL_COUNT_COLUMNS = ("total_counts", "n_counts", "nCount_peaks", "nCount_ATAC")


def _counts_note(matrix: Matrix, path) -> tuple:
    """A warning when the matrix read does not look like counts (a normalized X, as muon and Signac leave it):
    non-integer values, or only 0/1 where the obs column of each cell's total count says there were more."""
    data = matrix.X.data
    counts_layer = next((name for name in ("counts", "raw_counts", "raw") if name in matrix.layers), None)
    where = f"layer {matrix.layer!r}" if matrix.layer else "X"
    advice = (f"read its counts with --layer {counts_layer} (layer= in the API)" if counts_layer and counts_layer != matrix.layer
              else "pass the raw counts")
    if data.size == 0:
        return ()
    if not np.array_equal(data, np.round(data)):
        return (f"warning: {path}: {where} holds non-integer values (e.g. {data[data != np.round(data)][0]:.4g}): it "
                f"looks normalized, not counts; {advice}",)
    column = next((c for c in TOTAL_COUNT_COLUMNS if matrix.obs is not None and c in matrix.obs), None)
    if data.max() != 1 or column is None or not np.issubdtype(matrix.obs[column].dtype, np.number):
        return ()
    totals = matrix.obs[column].to_numpy(dtype=np.float64)
    sums = np.asarray(matrix.X.sum(axis=1)).ravel()
    # counts in real scATAC-seq hold values above 1, a sizeable share of the total (docs/benchmarks.md, "Defaults of
    # the methods"): a 0/1 X missing more than a twentieth of the cell's total in most cells is binarized counts
    if np.median((totals - sums) / np.maximum(totals, 1)) <= 0.05:
        return ()
    return (f"warning: {path}: {where} holds only 0/1 where obs[{column!r}] counts more per cell (median "
            f"{np.median(totals):,.0f} against {np.median(sums):,.0f}): it looks binarized, not counts; {advice}",)


def read(path, labels=None, label_key: str | None = None, layer: str | None = None, modality: str | None = None,
         use_selected: bool = False, peaks=None, tile_size: int | None = None, barcodes=None, min_fragments: int = 200,
         counting: str = "paired-insertion", verbose: bool = True):
    """Read a peak-by-cell count matrix, in any layout the suite knows, into an AnnData, as scanpy's readers do.

    The layout is detected from the path: a 10x or SCALE folder, a Matrix Market file, Cell Ranger's `.h5` (a Multiome
    file's Peaks only), an AnnData `.h5ad`, a MuData `.h5mu`, a dense peaks x cells table, or a fragment file
    (`fragments.tsv.gz`, counted as SnapATAC2's make_peak_matrix counts it). Every file is checked before the matrix is
    built, so a broken input is one InputError naming it.

    Parameters
    ----------
    path : str or Path
        The input.
    labels : str, Path or None
        A labels file: `barcode<TAB>label` lines (joined by barcode) or one label per line in cell order.
    label_key : str or None
        An obs column of an `.h5ad` holding the labels, instead of a file.
    layer : str or None
        `.h5ad` / `.h5mu`: read `layers[layer]` instead of `X` (muon and Signac leave TF-IDF in `X`).
    modality : str or None
        `.h5mu`: the modality to read (default 'atac').
    use_selected : bool
        `.h5ad` / `.h5mu`: keep only the peaks of `var["selected"]` (SnapATAC2's select_features).
    peaks : str, Path or None
        Fragment file: a BED file of the peaks to count in.
    tile_size : int or None
        Fragment file: count in fixed-width bins of this many bases instead (SnapATAC2's add_tile_matrix uses 500).
    barcodes : str, Path or None
        Fragment file: a file of the cells to keep (one per line, first column), in its order.
    min_fragments : int
        Fragment file without `barcodes`: a barcode is a cell from this many fragments (chrM not counted).
    counting : {'paired-insertion', 'insertion', 'fragment'}
        Fragment file: what counts 1 in a peak (`scatac.io.fragments`).
    verbose : bool
        Print what the reader set aside and any warning about values that do not look like counts.

    Returns
    -------
    AnnData
        `X`: (n_cells, n_peaks) CSR float32 counts, canonical (sorted, no duplicates, no stored zeros); obs_names the
        barcodes (made unique with a warning, as anndata's obs_names_make_unique); var_names the peaks; an `.h5ad`
        keeps its own obs and var columns.

    Writes
    ------
    obs["label"]
        Each cell's label, categorical, with `labels` or `label_key`.
    uns["scatac"]["source"]
        The path, which later messages name.
    uns["scatac"]["read_notes"]
        What the reader set aside (a Multiome file's Gene Expression features) and its warnings.

    Raises
    ------
    scatac.InputError
        A missing or unreadable input, a header that disagrees with its files, negative or NaN values, labels that do
        not match the barcodes or cannot be cell types.
    """
    matrix = read_matrix(path, layer=layer, modality=modality, use_selected=use_selected, peaks=peaks,
                         tile_size=tile_size, barcodes=barcodes, min_fragments=min_fragments, counting=counting)
    matrix = matrix._replace(notes=(*matrix.notes, *_counts_note(matrix, path)))
    label_values = read_labels(matrix.barcodes, labels, matrix.obs, label_key, source=path)
    barcodes = matrix.barcodes
    if len(set(barcodes)) != len(barcodes):
        barcodes, n_changed = make_unique(barcodes)
        warn(f"{path}: {n_changed} duplicate barcodes made unique by appending '-1', '-2', ...")
    import anndata
    import pandas as pd

    obs = matrix.obs.copy() if matrix.obs is not None else pd.DataFrame()
    obs.index = pd.Index(barcodes)
    var = matrix.var.copy() if matrix.var is not None else pd.DataFrame()
    var.index = pd.Index(matrix.peaks)
    if label_values is not None:
        obs["label"] = pd.Categorical(np.asarray(label_values).astype(str))
    adata = anndata.AnnData(X=matrix.X, obs=obs, var=var)
    adata.uns["scatac"] = {"source": str(path), "read_notes": list(matrix.notes)}
    if verbose:
        for note in matrix.notes:
            info(note)
    return adata


def write_10x(folder, X: sp.csr_matrix, barcodes, peaks, labels=None):
    """Write cells x peaks counts as a 10x-style folder, which every script reads as Cell Ranger output.

    Parameters
    ----------
    folder : str or Path
        Created if missing; gets matrix.mtx.gz (peaks x cells, integers), peaks.txt, barcodes.txt and, with labels,
        labels.txt (`barcode<TAB>label`).
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts.
    barcodes : sequence of str
        (n_cells,) the cells' names.
    peaks : sequence of str
        (n_peaks,) the peaks' names.
    labels : sequence of str or None
        (n_cells,) the cells' labels.

    Returns
    -------
    None
    """
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
