"""The count matrix of every supported layout, read into CSR cells x peaks float32 after its sizes were checked.

A Matrix Market header is read first and held against the peaks and barcodes files and against the file's own
size, so a broken or lying header is refused before anything is allocated.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from ..errors import InputError, fail
from .text import (COMPRESSED_SUFFIXES, READ_ERRORS, first_existing, open_binary, read_features, read_lines, read_problem,
                   without_compression)

# a folder's files, each plain or compressed: Cell Ranger ATAC's, SCALE's (data.mtx + cell_id.txt, and count.mtx +
# peak.txt + barcode.txt as its README documents)
MTX_NAMES = ["matrix.mtx", "data.mtx", "count.mtx"]
PEAKS_NAMES = ["peaks.txt", "peaks.bed", "features.tsv", "peak.txt"]
BARCODES_NAMES = ["barcodes.txt", "barcodes.tsv", "cell_id.txt", "barcode.txt"]
TABLE_SUFFIXES = (".txt", ".tsv", ".csv")
# a deflate stream expands at most ~1,032-fold; an entry line of a Matrix Market file takes at least 4 bytes ("1 1\n")
MAX_EXPANSION = {".gz": 1100, ".bz2": 50000, ".xz": 50000, ".zip": 1100}
MIN_ENTRY_BYTES = 4


class Matrix(NamedTuple):
    """What a reader returns: the counts and names of one input, before they become an AnnData.

    Attributes
    ----------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) float32 counts, canonical.
    barcodes : list of str
        (n_cells,) the cells' names.
    peaks : list of str
        (n_peaks,) the peaks' names.
    obs, var : pandas.DataFrame or None
        An `.h5ad`'s own obs and var tables (None for the other layouts).
    notes : tuple of str
        What the reader set aside, for the run's log.
    layers : tuple of str
        An AnnData's layer names.
    layer : str or None
        The layer read (None: X).
    """

    X: sp.csr_matrix
    barcodes: list
    peaks: list
    obs: object = None
    var: object = None
    notes: tuple = ()  # what the reader set aside, for the run's log
    layers: tuple = ()  # an AnnData's layer names, and the one read (None: X)
    layer: str | None = None


def only_peaks(matrix: Matrix, types, source: Path) -> Matrix:
    """Keep the "Peaks" features of a 10x matrix that holds others too (a Multiome file also holds Gene Expression):
    training on genes and peaks together as "peaks" would be a silent wrong result."""
    if types is None:
        return matrix
    types = np.asarray(types, dtype=object)
    keep = types == "Peaks"
    if keep.all():
        return matrix
    kinds, counts = np.unique(types[~keep], return_counts=True)
    aside = ", ".join(f"{n:,} {kind}" for kind, n in zip(kinds, counts))
    if not keep.any():
        fail(source, f"has no 'Peaks' features (it holds {aside} features): not a chromatin accessibility matrix")
    peaks = [name for name, k in zip(matrix.peaks, keep) if k]
    note = f"{source}: set aside {aside} features, kept the {int(keep.sum()):,} Peaks"
    return matrix._replace(X=matrix.X[:, np.flatnonzero(keep)].tocsr(), peaks=peaks, notes=(*matrix.notes, note))


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


def mtx_header(path: Path) -> tuple[int, int, int]:
    """(rows, columns, entries) of a Matrix Market file's header, checked against the file's size."""
    try:
        with open_binary(path) as handle:
            banner = handle.readline(256).decode("ascii", "replace").split()
            line = handle.readline(256)
            while line.startswith(b"%"):
                line = handle.readline(256)
            sizes = line.decode("ascii", "replace").split()
    except InputError:
        raise
    except READ_ERRORS as exc:
        fail(path, read_problem(exc))
    if len(banner) < 4 or banner[0].lower() != "%%matrixmarket" or banner[1].lower() != "matrix":
        fail(path, "is not a Matrix Market file (its first line is not '%%MatrixMarket matrix ...')")
    if banner[2].lower() != "coordinate":
        fail(path, f"is a Matrix Market '{banner[2]}' matrix; expected the sparse 'coordinate' format")
    if len(sizes) != 3 or not all(s.isdigit() for s in sizes):
        fail(path, f"has no 'rows columns entries' line after its header (found {' '.join(sizes)[:60]!r})")
    rows, cols, entries = map(int, sizes)
    size = path.stat().st_size
    most = size * MAX_EXPANSION.get(path.suffix.lower(), 1) // MIN_ENTRY_BYTES
    if entries > rows * cols or entries > most:
        fail(path, f"header claims {entries:,} entries of a {rows:,} x {cols:,} matrix but the file has {size:,} bytes: "
                   "corrupt or truncated")
    return rows, cols, entries


def _read_mtx(path: Path, shape: tuple[int, int]) -> sp.csr_matrix:
    """A Matrix Market file (peaks x cells) whose header said `shape`, as CSR cells x peaks."""
    import scipy.io

    try:
        if path.suffix.lower() in COMPRESSED_SUFFIXES:
            with open_binary(path) as handle:
                matrix = scipy.io.mmread(handle)
        else:
            # by path, not an open file: fast_matrix_market aborts the process (C++ terminate)
            # on a parse error in a plain file handle instead of raising ValueError
            matrix = scipy.io.mmread(str(path))
    except (*READ_ERRORS, ValueError, IndexError, TypeError, RuntimeError) as exc:
        fail(path, f"corrupt or truncated Matrix Market file ({exc.__class__.__name__}: {exc})")
    if matrix.shape != shape:
        fail(path, f"holds a {matrix.shape[0]} x {matrix.shape[1]} matrix but its header said {shape[0]} x {shape[1]}")
    if not sp.issparse(matrix):
        matrix = sp.coo_matrix(matrix)
    return sp.csr_matrix(matrix.T, dtype=np.float32)


def _folder_mtx(path: Path) -> Path:
    """The Matrix Market file of a folder, or `path` itself when it is one."""
    if not path.is_dir():
        return path
    mtx = first_existing(path, MTX_NAMES)
    if mtx is None:
        fail(path, f"folder has no {', '.join(MTX_NAMES)} (plain or compressed): expected a 10x or SCALE layout")
    return mtx


def _folder_files(path: Path) -> tuple[Path, Path, Path]:
    mtx = _folder_mtx(path)
    found = []
    for names, what in ((PEAKS_NAMES, "peaks"), (BARCODES_NAMES, "barcodes")):
        found.append(first_existing(mtx.parent, names))
        if found[-1] is None:
            fail(mtx.parent, f"folder has no {' or '.join(names)} (plain or compressed) with the {what} of {mtx.name}")
    return mtx, *found


def _is_mtx(name: str) -> bool:
    return without_compression(name).endswith(".mtx")


def _load_10x_folder(path: Path) -> Matrix:
    """A 10x/SCALE folder, or a Matrix Market file (peaks x cells) with its peaks and barcodes beside it."""
    mtx, peaks_file, barcodes_file = _folder_files(path)
    peaks, types = read_features(peaks_file)
    barcodes = [line.split("\t")[0] for line in read_lines(barcodes_file)]
    rows, cols, _ = mtx_header(mtx)
    if len(peaks) != rows:
        fail(peaks_file, f"has {len(peaks)} peaks but {mtx.name} has {rows} rows")
    if len(barcodes) != cols:
        fail(barcodes_file, f"has {len(barcodes)} barcodes but {mtx.name} has {cols} columns")
    return only_peaks(_named(_read_mtx(mtx, (rows, cols)), barcodes, peaks, mtx, peaks_file, barcodes_file), types, mtx)


def _h5_strings(values) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values[()]]


def _h5_group(handle):
    return handle["matrix"] if "matrix" in handle else handle[next(iter(handle.keys()))]


def _tenx_header(group, source) -> tuple:
    """A 10x HDF5 matrix group's header: (n_features, n_cells, barcodes, names, types), the features' ids (or
    names) and feature_type (None when absent), checked against its shape (peaks x cells, stored column-major).
    Cell Ranger ATAC 1.x kept the peaks under "genes". A missing dataset raises KeyError, for the caller to name."""
    n_features, n_cells = (int(v) for v in group["shape"][()])
    barcodes = _h5_strings(group["barcodes"])
    if "features" in group:
        features = group["features"]
        names = _h5_strings(features["id"] if "id" in features else features["name"])
        types = _h5_strings(features["feature_type"]) if "feature_type" in features else None
    else:  # Cell Ranger ATAC 1.x kept peaks under "genes"
        names, types = _h5_strings(group["genes"]), None
    if len(barcodes) != n_cells:
        fail(source, f"has {len(barcodes)} barcodes but its matrix has {n_cells} cells")
    if len(names) != n_features:
        fail(source, f"has {len(names)} peaks but its matrix has {n_features} peaks")
    return n_features, n_cells, barcodes, names, types


def _load_10x_h5(path: Path) -> Matrix:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            group = _h5_group(handle)
            n_peaks, n_cells, barcodes, peaks, types = _tenx_header(group, path)
            if group["indptr"].shape != (n_cells + 1,) or group["indices"].shape != group["data"].shape:
                fail(path, "corrupt sparse matrix: indptr, indices and data do not fit its shape")
            data = group["data"][()].astype(np.float32)
            indices = group["indices"][()]
            indptr = group["indptr"][()]
    except InputError:
        raise
    except (OSError, KeyError, StopIteration, ValueError, TypeError) as exc:
        fail(path, f"not a readable 10x HDF5 matrix ({exc.__class__.__name__}: {exc})")
    try:
        # CSC peaks x cells is CSR cells x peaks with the same three arrays.
        X = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_peaks))
        X.check_format(full_check=True)
    except ValueError as exc:
        fail(path, f"corrupt sparse matrix ({exc})")
    return only_peaks(_named(X, barcodes, peaks, path), types, path)


def _h5_filters():
    """Register the HDF5 compression filters that h5py lacks (Blosc, which SnapATAC2 writes with, LZ4, Zstd, ...)."""
    import importlib

    try:
        importlib.import_module("hdf5plugin")  # registers them on import
    except ImportError:  # then a Blosc file fails with HDF5's own message, named below
        pass


def _anndata_of(path: Path, modality: str | None):
    """The AnnData in an .h5ad, or one modality of a MuData .h5mu (its /mod/<modality> group, as muon writes it)."""
    import anndata
    import h5py

    _h5_filters()
    if not path.name.lower().endswith(".h5mu"):
        if modality is not None:
            fail(path, "--modality applies to .h5mu files (MuData); this is an .h5ad")
        return anndata.read_h5ad(path)
    with h5py.File(path, "r") as handle:
        if "mod" not in handle:
            fail(path, "is not a MuData file: it has no 'mod' group")
        modalities = list(handle["mod"].keys())
        modality = modality or "atac"
        if modality not in modalities:
            fail(path, f"has no modality {modality!r} (it has: {', '.join(modalities) or 'none'}); choose one with --modality")
        return anndata.io.read_elem(handle["mod"][modality])


def _load_h5ad(path: Path, layer: str | None = None, modality: str | None = None, use_selected: bool = False) -> Matrix:
    try:
        adata = _anndata_of(path, modality)
    except InputError:
        raise
    except Exception as exc:  # anndata and HDF5 raise many kinds for a broken file
        fail(path, f"not a readable AnnData file ({exc.__class__.__name__}: {exc})".replace("\n", " "))
    if layer is not None:
        if layer not in adata.layers:
            fail(path, f"has no layer {layer!r} (layers: {', '.join(adata.layers) or 'none'})")
        X = adata.layers[layer]
    else:
        X = adata.X
    if X is None:
        fail(path, "AnnData file has no X matrix")
    if use_selected:
        if "selected" not in adata.var:
            fail(path, "var has no 'selected' column (--use-selected reads SnapATAC2's select_features result)")
        selected = np.asarray(adata.var["selected"], dtype=bool)
        if not selected.any():
            fail(path, "var['selected'] selects no peak")
        X, adata = X[:, np.flatnonzero(selected)], adata[:, selected]
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32)
    else:
        # A dense X is already in memory; keep only its non-zeros.
        X = sp.csr_matrix(np.asarray(X, dtype=np.float32))
    _check_values(path, X)
    notes = () if use_selected is False else (f"{path}: kept the {X.shape[1]:,} peaks of var['selected']",)
    return Matrix(X, [str(v) for v in adata.obs_names], [str(v) for v in adata.var_names], obs=adata.obs.copy(),
                  var=adata.var.copy(), notes=notes, layers=tuple(adata.layers), layer=layer)


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
    except (pd.errors.ParserError, pd.errors.EmptyDataError, *READ_ERRORS, ValueError) as exc:
        fail(path, f"cannot parse as a peaks x cells table ({exc.__class__.__name__}: {exc})".replace("\n", " "))
    if not blocks or barcodes is None or not barcodes:
        fail(path, "table is empty")
    X = sp.vstack(blocks).T.tocsr().astype(np.float32)
    if np.isnan(X.data).any():
        fail(path, "matrix contains NaN values (empty or 'NA' cells in the table)")
    _check_values(path, X)
    return Matrix(X, barcodes, peaks)





def _is_table(name: str) -> bool:
    return without_compression(name).endswith(TABLE_SUFFIXES)


def read_matrix(path, layer: str | None = None, modality: str | None = None, use_selected: bool = False,
                peaks=None, tile_size: int | None = None, barcodes=None, min_fragments: int = 200,
                counting: str = "paired-insertion") -> Matrix:
    """The counts at `path`, in any supported layout detected from the path.

    Parameters
    ----------
    path : str or Path
        The input (`scatac.read` lists the layouts).
    layer, modality, use_selected
        AnnData (`.h5ad`) and MuData (`.h5mu`) inputs, as `scatac.read` takes them.
    peaks, tile_size, barcodes, min_fragments, counting
        Fragment files, as `scatac.read` takes them (`scatac.io.fragments.count_fragments`).

    Returns
    -------
    Matrix
        X canonical CSR (n_cells, n_peaks) float32, the names, and an AnnData's own tables.

    Raises
    ------
    scatac.InputError
        A missing, unknown or broken input, named.
    """
    from .fragments import count_fragments, is_fragment_input

    path = Path(path)
    if not path.exists():
        fail(path, "no such file or folder")
    name = path.name.lower()
    is_anndata = name.endswith((".h5ad", ".h5mu"))
    # a fragment file by its name (fragments.tsv.gz, atac_fragments.tsv.gz), or any text table given peaks to count in
    is_fragments = is_fragment_input(path, peaks, tile_size)
    for given, flag, applies in ((layer, "--layer", is_anndata), (modality, "--modality", is_anndata),
                                 (use_selected or None, "--use-selected", is_anndata),
                                 (barcodes, "--barcodes", is_fragments), (peaks, "--peaks", is_fragments),
                                 (tile_size, "--tile-size", is_fragments)):
        if given is not None and not applies:
            fail(path, f"{flag} applies to " + ("AnnData .h5ad and MuData .h5mu files" if flag in ("--layer", "--modality", "--use-selected")
                                               else "fragment files (chrom, start, end, barcode, count)"))
    if is_fragments:
        X, cells, features, notes = count_fragments(path, peaks, tile_size, barcodes, min_fragments, counting)
        matrix = Matrix(X, cells, features, notes=notes)
        _check_values(path, X)
    elif path.is_dir():
        matrix = _load_10x_folder(path)
    elif is_anndata:
        matrix = _load_h5ad(path, layer, modality, use_selected)
    elif name.endswith((".h5", ".hdf5")):
        _h5_filters()
        matrix = _load_10x_h5(path)
    elif _is_mtx(name):
        matrix = _load_10x_folder(path)
    elif _is_table(name):
        matrix = _load_dense_table(path)
    else:
        fail(path, "unknown format; expected a 10x/SCALE folder, .h5, .h5ad, .h5mu, .mtx[.gz], a .txt/.tsv/.csv table "
                   "(plain, .gz, .bz2, .xz or .zip) or a fragments.tsv.gz with --peaks or --tile-size")
    X = matrix.X
    X.sum_duplicates()
    X.eliminate_zeros()
    X.sort_indices()
    return matrix


def peek_shape(path) -> tuple[int, int] | None:
    """(n_cells, n_peaks) from a file's header alone, without reading the matrix.

    What lets a script refuse a `latent_dim` too large for the data before loading it.

    Parameters
    ----------
    path : str or Path
        The input.

    Returns
    -------
    tuple of int or None
        (n_cells, n_peaks); None where a layout has no header (a table) or the header cannot be read (`read_matrix`
        then says why).
    """
    path = Path(path)
    try:
        name = path.name.lower()
        if path.is_dir() or _is_mtx(name):
            rows, cols, _ = mtx_header(_folder_mtx(path))
            return cols, rows
        if name.endswith((".h5", ".hdf5", ".h5ad")):
            import h5py

            with h5py.File(path, "r") as handle:
                if name.endswith(".h5ad"):
                    X = handle["X"]
                    shape = X.attrs["shape"] if "shape" in X.attrs else X.shape
                    return int(shape[0]), int(shape[1])
                n_peaks, n_cells = (int(v) for v in _h5_group(handle)["shape"][()])
                return n_cells, n_peaks
    except Exception:  # the full read reports the problem properly
        return None
    return None
