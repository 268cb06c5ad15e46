"""Reading every input layout into an AnnData of counts (cells x peaks, CSR float32), with labels;
writing the 10x layout back.

Layouts: a 10x/SCALE folder (matrix.mtx[.gz] + peaks + barcodes), a path to the .mtx itself, Cell
Ranger's .h5, an AnnData .h5ad, a dense peaks x cells table (.txt/.tsv/.csv, plain or compressed).
Every file is checked before the AnnData is built, so a broken input is one InputError naming it, early:
text.py reads text as users have it, matrices.py each layout, labels.py the labels.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import warn
from ..files import atomic_path, write_text
from .labels import read_labels
from .matrices import Matrix, peek_shape, read_matrix

__all__ = ["read", "read_matrix", "read_labels", "peek_shape", "make_unique", "write_10x", "Matrix"]


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


def read(path, labels=None, label_key: str | None = None):
    """Read a peak-by-cell count matrix (any supported layout) into an AnnData, as scanpy's readers do.

    X: (n_cells, n_peaks) CSR float32 counts, canonical (sorted, no duplicates, no stored zeros).
    obs_names are the barcodes (made unique with a warning, as anndata's obs_names_make_unique);
    var_names the peaks; an .h5ad keeps its own obs and var columns. With `labels` (a file) or
    `label_key` (an obs column of an .h5ad), `obs["label"]` holds each cell's label.
    `uns["scatac"]["source"]` records the path, which later messages name.
    """
    matrix = read_matrix(path)
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
    adata.uns["scatac"] = {"source": str(path)}
    return adata


def write_10x(folder, X: sp.csr_matrix, barcodes, peaks, labels=None):
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
