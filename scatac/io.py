"""Reading every input layout into an AnnData of counts (cells x peaks, CSR float32), with labels;
writing the 10x layout back.

Layouts: a 10x/SCALE folder (matrix.mtx[.gz] + peaks + barcodes), a path to the .mtx itself, Cell
Ranger's .h5, an AnnData .h5ad, a dense peaks x cells table (.txt/.tsv/.csv[.gz]). Every file is
checked before the AnnData is built, so a broken input is one InputError naming it, early.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp

from .errors import InputError, fail, warn
from .files import atomic_path, write_text


class Matrix(NamedTuple):
    """What a reader returns: X (n_cells, n_peaks) CSR float32, the cell and peak names, and an
    .h5ad's own obs and var tables (None for the other layouts)."""

    X: sp.csr_matrix
    barcodes: list
    peaks: list
    obs: object = None
    var: object = None


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


def _named(X: sp.csr_matrix, barcodes: list, peaks: list, source: Path, peaks_file=None, barcodes_file=None) -> Matrix:
    """The matrix read from `source` with its names, once they match its shape and its values are counts."""
    for names, axis, kind, file in ((peaks, 1, "peaks", peaks_file), (barcodes, 0, "barcodes", barcodes_file)):
        if len(names) != X.shape[axis]:
            where = f"{source.name} has" if file is not None else "the matrix has"
            fail(file or source, f"has {len(names)} {kind} but {where} {X.shape[axis]} {'peaks' if axis else 'cells'}")
    _check_values(source, X)
    return Matrix(X, barcodes, peaks)


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


def _load_10x_folder(folder: Path) -> Matrix:
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
    return _named(X, barcodes, peaks, mtx, peaks_file, barcodes_file)


def _h5_strings(values) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values[()]]


def _load_10x_h5(path: Path) -> Matrix:
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
    return _named(X, barcodes, peaks, path)


def _load_h5ad(path: Path) -> Matrix:
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
    return Matrix(X, [str(v) for v in adata.obs_names], [str(v) for v in adata.var_names], obs=adata.obs, var=adata.var)


def _load_dense_table(path: Path, chunk_rows: int = 2000) -> Matrix:
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
    return Matrix(X, barcodes, peaks)



def read_matrix(path) -> Matrix:
    """The counts at `path` in any supported layout, detected from the path; X canonical CSR cells x peaks."""
    path = Path(path)
    if not path.exists():
        fail(path, "no such file or folder")
    if path.is_dir():
        matrix = _load_10x_folder(path)
    else:
        name = path.name.lower()
        if name.endswith(".h5ad"):
            matrix = _load_h5ad(path)
        elif name.endswith((".h5", ".hdf5")):
            matrix = _load_10x_h5(path)
        elif name.endswith((".mtx", ".mtx.gz")):
            matrix = _load_10x_folder(path.parent)
        elif name.endswith((".txt", ".tsv", ".csv", ".txt.gz", ".tsv.gz", ".csv.gz")):
            matrix = _load_dense_table(path)
        else:
            fail(path, "unknown format; expected a 10x/SCALE folder, .h5, .h5ad, .mtx[.gz] or a .txt/.tsv/.csv[.gz] table")
    X = matrix.X
    X.sum_duplicates()
    X.eliminate_zeros()
    X.sort_indices()
    return matrix


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


def read_labels(barcodes: Sequence[str], labels_path=None, obs=None, label_key: str | None = None,
                source="data") -> np.ndarray | None:
    """One label per cell, in cell order, or None when neither `labels_path` nor `label_key` is given.

    A labels file is either `barcode<TAB>label` lines (header optional), joined by barcode, or one
    label per line in cell order. `label_key` takes a column of an .h5ad's obs instead.
    """
    if label_key is not None:
        if obs is None:
            fail(source, "--label-key needs an .h5ad input with obs columns")
        if label_key not in obs.columns:
            fail(source, f"obs has no column {label_key!r} (columns: {', '.join(map(str, obs.columns)) or 'none'})")
        column = obs[label_key]
        if column.isna().any():
            fail(source, f"obs column {label_key!r} has {int(column.isna().sum())} cells without a label")
        return column.astype(str).to_numpy()
    if labels_path is None:
        return None
    path = Path(labels_path)
    if not path.exists():
        fail(path, "no such labels file")
    lines = _read_lines(path)
    if not lines:
        fail(path, "labels file is empty")
    rows = [line.split("\t") for line in lines]
    if not all(len(r) >= 2 for r in rows):
        values = [r[0] for r in rows]
        if len(values) != len(barcodes):
            fail(path, f"has {len(values)} labels in cell order but the matrix has {len(barcodes)} cells")
        return np.array(values, dtype=object)
    if len(set(barcodes)) != len(barcodes):
        dup = next(b for b in barcodes if barcodes.count(b) > 1)
        fail(source, f"duplicate barcode {dup!r}: cannot join labels by barcode")
    barcode_set = set(barcodes)
    if rows[0][0] not in barcode_set and all(r[0] in barcode_set for r in rows[1:2]):
        rows = rows[1:]  # header line
    mapping = {}
    for r in rows:
        if r[0] in mapping and mapping[r[0]] != r[1]:
            fail(path, f"barcode {r[0]!r} has two labels ({mapping[r[0]]!r}, {r[1]!r})")
        mapping[r[0]] = r[1]
    missing = [b for b in barcodes if b not in mapping]
    if missing:
        fail(path, f"{len(missing)} of {len(barcodes)} barcodes have no label (e.g. {missing[0]!r})")
    return np.array([mapping[b] for b in barcodes], dtype=object)


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
