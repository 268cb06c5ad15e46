"""Counts from a fragment file, as SnapATAC2's make_peak_matrix / add_tile_matrix count them.

A fragment file (Cell Ranger ATAC's fragments.tsv.gz, also what ArchR, Signac and SnapATAC2 start from) holds
one line per unique fragment: chrom, start, end (0-based, end exclusive), barcode, and the number of read pairs
behind it (PCR duplicates), after '#' comment lines. The two Tn5 insertions of a fragment are its first and last
base (start and end - 1). Counting, with SnapATAC2's names:

* ``paired-insertion`` (SnapATAC2's default; Miao et al. 2024, PIC): each insertion that falls in a feature counts 1,
  but a fragment whose two insertions fall in the same feature counts 1 there, not 2;
* ``insertion``: each insertion in a feature counts 1 (Cell Ranger ATAC's cut sites);
* ``fragment``: each fragment overlapping a feature counts 1 (Signac's FeatureMatrix).

Each line counts once whatever its duplicate count, as in all three tools. Features are the peaks of a BED file,
or fixed-width tiles of the genome (``chrom:k*size-(k+1)*size``, those any insertion touched). The file is read in
chunks of lines and each chunk is added into a sparse matrix of every barcode seen, so memory follows the output
matrix, not the file; cells are then the barcodes given, or those with at least `min_fragments` fragments
(SnapATAC2's import_fragments keeps barcodes with >= 200 by default).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import InputError, fail
from .text import BED_HEADER_STARTS, READ_ERRORS, read_lines, read_problem, without_compression

COUNTING = ("paired-insertion", "insertion", "fragment")
MITOCHONDRIA = ("chrM", "M", "MT", "chrMT")  # not counted toward a barcode's fragments, as SnapATAC2's n_fragment
CHUNK_LINES = 1_000_000


def is_fragment_file(path: Path) -> bool:
    """Whether `path` is read as a fragment file: its name holds "fragment" and ends in .tsv, .bed or .txt.

    Parameters
    ----------
    path : Path
        The input.

    Returns
    -------
    bool
    """
    return "fragment" in path.name.lower() and without_compression(path.name.lower()).endswith((".tsv", ".bed", ".txt"))


def is_fragment_input(path: Path, peaks=None, tile_size=None) -> bool:
    """Whether `scatac.read` counts `path` as a fragment file: by its name (`is_fragment_file`), or any text table given
    peaks or a tile size to count in.

    Parameters
    ----------
    path : Path
        The input.
    peaks, tile_size
        The read's --peaks and --tile-size (None when not given).

    Returns
    -------
    bool
    """
    return path.is_file() and (is_fragment_file(path) or (
        (peaks is not None or tile_size is not None) and without_compression(path.name.lower()).endswith(
            (".tsv", ".txt", ".bed"))))


class Peaks:
    """A BED file's intervals, by chromosome, sorted by start: what a position or a fragment overlaps.

    Parameters
    ----------
    path : Path
        The BED file (`#` comments and UCSC track / browser lines allowed); each interval is named `chrom:start-end`.

    Attributes
    ----------
    names : list of str
        The peaks' names, in the file's order (the columns of the counts).
    by_chrom : dict
        chrom -> (starts, ends, column of each, the widest peak's width), sorted by start.

    Raises
    ------
    scatac.InputError
        A line that is not an interval, or no peaks.
    """

    def __init__(self, path: Path):
        chroms, starts, ends = [], [], []
        for number, line in enumerate(read_lines(path), start=1):
            if not line.strip() or line.startswith(BED_HEADER_STARTS):
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 3 or not fields[1].isdigit() or not fields[2].isdigit() or int(fields[2]) <= int(fields[1]):
                fail(path, f"line {number} is not a BED interval 'chrom<TAB>start<TAB>end' with start < end: {line[:60]!r}")
            chroms.append(fields[0])
            starts.append(int(fields[1]))
            ends.append(int(fields[2]))
        if not chroms:
            fail(path, "has no peaks")
        self.names = [f"{c}:{s}-{e}" for c, s, e in zip(chroms, starts, ends)]
        chroms, starts, ends = np.array(chroms, dtype=object), np.array(starts), np.array(ends)
        self.by_chrom = {}
        for chrom in dict.fromkeys(chroms):
            index = np.flatnonzero(chroms == chrom)
            index = index[np.argsort(starts[index], kind="stable")]
            self.by_chrom[chrom] = (starts[index], ends[index], index, int((ends[index] - starts[index]).max()))

    def at(self, chrom: str, positions: np.ndarray):
        """(rows, peaks): every peak holding each position (row = index into `positions`)."""
        return self._overlaps(chrom, positions, positions + 1)

    def overlapping(self, chrom: str, starts: np.ndarray, ends: np.ndarray):
        """(rows, peaks): every peak that [starts, ends) overlaps."""
        return self._overlaps(chrom, starts, ends)

    def _overlaps(self, chrom, lo, hi):
        if chrom not in self.by_chrom:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        peak_starts, peak_ends, index, widest = self.by_chrom[chrom]
        rows = np.arange(len(lo))
        candidate = np.searchsorted(peak_starts, hi, side="left") - 1  # the last peak starting before hi
        found_rows, found_peaks = [], []
        while rows.size:  # step back through earlier peaks while one could still reach lo
            alive = (candidate >= 0)
            rows, candidate = rows[alive], candidate[alive]
            alive = peak_starts[candidate] + widest > lo[rows]
            rows, candidate = rows[alive], candidate[alive]
            hit = peak_ends[candidate] > lo[rows]
            found_rows.append(rows[hit])
            found_peaks.append(index[candidate[hit]])
            candidate = candidate - 1
        return np.concatenate(found_rows), np.concatenate(found_peaks)


class Tiles:
    """Fixed-width bins of the genome, numbered as they are first touched, named and ordered at the end.

    Only bins some fragment touched become features (SnapATAC2's add_tile_matrix keeps every bin of the genome).

    Parameters
    ----------
    size : int
        The bins' width in bases; bin k of a chromosome is named `chrom:k*size-(k+1)*size`.

    Attributes
    ----------
    keys : dict
        (chrom, bin) -> column, in the order first touched.
    """

    def __init__(self, size: int):
        self.size = size
        self.keys = {}  # (chrom, bin) -> column

    def _columns(self, chrom, bins):
        unique, inverse = np.unique(bins, return_inverse=True)
        columns = np.array([self.keys.setdefault((chrom, int(b)), len(self.keys)) for b in unique], dtype=np.int64)
        return columns[inverse]

    def at(self, chrom, positions):
        """(rows, columns): the bin holding each position (row = index into `positions`)."""
        return np.arange(len(positions)), self._columns(chrom, positions // self.size)

    def overlapping(self, chrom, starts, ends):
        """(rows, columns): every bin that [starts, ends) touches."""
        first = starts // self.size
        spans = (ends - 1) // self.size - first + 1  # bins each fragment touches
        rows = np.repeat(np.arange(len(starts)), spans)
        offsets = np.arange(len(rows)) - np.repeat(np.cumsum(spans) - spans, spans)
        return rows, self._columns(chrom, np.repeat(first, spans) + offsets)

    def order_and_names(self, chrom_order: dict):
        """The bins in genome order: (the column each sorted bin had, their names), chromosomes in `chrom_order` (first seen)."""
        keys = sorted(self.keys, key=lambda k: (chrom_order.get(k[0], len(chrom_order)), k[0], k[1]))
        columns = np.array([self.keys[k] for k in keys], dtype=np.int64)
        return columns, [f"{c}:{b * self.size}-{(b + 1) * self.size}" for c, b in keys]


def _hits(features, chrom, starts, ends, counting):
    """(rows, features) to add 1 at, for one chromosome's fragments."""
    if counting == "fragment":
        return features.overlapping(chrom, starts, ends)
    first_rows, first = features.at(chrom, starts)
    last_rows, last = features.at(chrom, ends - 1)
    rows, columns = np.concatenate([first_rows, last_rows]), np.concatenate([first, last])
    if counting == "paired-insertion":  # both insertions in one feature: once
        width = int(columns.max(initial=0)) + 1
        pairs = np.unique(rows * width + columns)
        rows, columns = pairs // width, pairs % width
    return rows, columns


def count_fragments(path, peaks=None, tile_size: int | None = None, barcodes=None, min_fragments: int = 200,
                    counting: str = "paired-insertion", chunk_lines: int = CHUNK_LINES, progress: bool = True):
    """The cells x features counts of a fragment file, as SnapATAC2's make_peak_matrix and add_tile_matrix count them.

    The file is read in chunks of `chunk_lines` lines, each added into a sparse matrix of every barcode seen, so memory
    follows the counted matrix, not the file. Each line counts once whatever its duplicate count.

    Parameters
    ----------
    path : str or Path
        A fragment file (chrom, start, end, barcode, count; `#` comments first), plain or compressed.
    peaks : str, Path or None
        A BED file of the features to count in.
    tile_size : int or None
        Else bins of this many bases (one of `peaks` and `tile_size` must be given).
    barcodes : str, Path or None
        A file of the cells to keep (one per line, first column), in its order.
    min_fragments : int
        Without `barcodes`: the barcodes with at least this many fragments (chrM not counted) are the cells, sorted.
    counting : {'paired-insertion', 'insertion', 'fragment'}
        'paired-insertion' (SnapATAC2's default): each insertion in a feature counts 1, but a fragment with both in the
        same feature counts 1 there; 'insertion': each insertion counts 1 (Cell Ranger's cut sites); 'fragment': each
        fragment overlapping a feature counts 1 (Signac's FeatureMatrix).
    chunk_lines : int
        Lines parsed at a time.
    progress : bool
        A tqdm bar of lines read.

    Returns
    -------
    X : scipy.sparse.csr_matrix
        (n_cells, n_features) float32 counts.
    barcodes : list of str
        (n_cells,) the cells.
    features : list of str
        (n_features,) the peaks' or tiles' names.
    notes : tuple of str
        What the run should say (how many barcodes were cells, barcodes given without a fragment).

    Raises
    ------
    scatac.InputError
        A broken file, no features given, an unknown counting, or no cell.
    """
    path = Path(path)
    features = _features(path, peaks, tile_size, counting)
    code_of, chrom_order = {}, {}  # barcode -> row of `total`, in the order first seen; chrom -> order first seen
    fragments = np.zeros(0, np.int64)
    total, parts = None, []
    for lines_barcode, counted, rows, columns in _chunk_hits(path, features, counting, chunk_lines, progress, code_of,
                                                             chrom_order):
        fragments = _add_fragments(fragments, lines_barcode, counted, len(code_of))
        parts.append((rows, columns))
        if sum(len(r) for r, _ in parts) > chunk_lines:  # fold into the running sum
            total = _fold(total, parts, len(code_of))
            parts = []
    total = _fold(total, parts, len(code_of))
    n_features = len(features.names) if isinstance(features, Peaks) else len(features.keys)
    total.resize((len(code_of), max(n_features, 1)))
    cell_codes, cells, notes = _cells(path, code_of, fragments, barcodes, min_fragments)
    X = total[cell_codes]
    if isinstance(features, Tiles):
        columns, feature_names = features.order_and_names(chrom_order)
        X = X[:, columns]
    else:
        feature_names = features.names
    return sp.csr_matrix(X, dtype=np.float32), cells, feature_names, notes


def _features(path: Path, peaks, tile_size, counting: str):
    """The features to count in (Peaks of a BED file, or Tiles), the arguments checked."""
    if counting not in COUNTING:
        fail("--counting", f"must be one of {', '.join(COUNTING)}, got {counting!r}")
    if (peaks is None) == (tile_size is None):
        fail(path, "a fragment file needs --peaks PEAKS.bed or --tile-size N (one of them) to count fragments in")
    return Peaks(Path(peaks)) if peaks is not None else Tiles(int(tile_size))


def _chunk_hits(path: Path, features, counting: str, chunk_lines: int, progress: bool, code_of: dict, chrom_order: dict):
    """The fragment file read `chunk_lines` lines at a time. Yields, per chunk, (the barcode code of each line, whether
    each line counts toward its barcode's fragments (not chrM), the barcode codes and feature columns of its hits);
    with `features` None the lines are read and checked but no hit is counted (empty arrays). `code_of` (barcode ->
    code, in the order first seen) and `chrom_order` grow as the file is read. A broken file is an InputError naming
    it."""
    import pandas as pd
    from tqdm.auto import tqdm

    none = np.zeros(0, np.int64)
    try:
        reader = pd.read_csv(path, sep="\t", header=None, comment="#", usecols=[0, 1, 2, 3],
                             names=["chrom", "start", "end", "barcode"], dtype={"chrom": "category", "barcode": "category",
                                                                               "start": np.int64, "end": np.int64},
                             chunksize=chunk_lines, compression="infer")
        bar = tqdm(desc="fragments", unit=" lines", unit_scale=True, disable=not progress, leave=False)
        for chunk in reader:
            bar.update(len(chunk))
            categories = chunk["barcode"].cat.categories
            lookup = np.array([code_of.setdefault(b, len(code_of)) for b in categories], dtype=np.int64)
            lines_barcode = lookup[chunk["barcode"].cat.codes.to_numpy()]
            starts, ends = chunk["start"].to_numpy(), chunk["end"].to_numpy()
            if (ends <= starts).any():
                fail(path, "has a fragment whose end is not after its start: not a fragment file (chrom, start, end, "
                           "barcode, count)")
            chroms = chunk["chrom"]
            counted = ~chroms.isin(MITOCHONDRIA).to_numpy()
            all_rows, all_columns = [none], [none]
            codes = chroms.cat.codes.to_numpy()
            for code, chrom in enumerate(chroms.cat.categories):
                chrom_order.setdefault(chrom, len(chrom_order))
                which = np.flatnonzero(codes == code)
                if which.size == 0 or features is None:
                    continue
                rows, columns = _hits(features, chrom, starts[which], ends[which], counting)
                all_rows.append(lines_barcode[which[rows]])
                all_columns.append(columns)
            yield lines_barcode, counted, np.concatenate(all_rows), np.concatenate(all_columns)
        bar.close()
    except InputError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, *READ_ERRORS) as exc:
        problem = read_problem(exc) if isinstance(exc, READ_ERRORS) else f"cannot be parsed as a fragment file " \
            f"(chrom, start, end, barcode, count) ({exc.__class__.__name__}: {exc})".replace("\n", " ")
        fail(path, problem)
    if not code_of:
        fail(path, "has no fragments")


def _add_fragments(fragments: np.ndarray, lines_barcode: np.ndarray, counted: np.ndarray, n_barcodes: int):
    """Each barcode's fragments (chrM not counted) so far, with one chunk's lines added."""
    fragments = np.pad(fragments, (0, n_barcodes - len(fragments)))
    return fragments + np.bincount(lines_barcode[counted], minlength=n_barcodes)


def _cells(path: Path, code_of: dict, fragments: np.ndarray, barcodes, min_fragments: int):
    """Which barcodes are cells: those of the `barcodes` file, in its order, or those with at least `min_fragments`
    fragments, sorted as Cell Ranger lists them. Returns (their codes, their names, the notes to print)."""
    seen = list(code_of)
    if barcodes is not None:
        wanted = list(dict.fromkeys(line.split("\t")[0].strip() for line in read_lines(Path(barcodes)) if line.strip()))
        missing = [b for b in wanted if b not in code_of]
        if len(missing) == len(wanted):
            fail(barcodes, f"none of its {len(wanted)} barcodes is in {path.name} (e.g. {wanted[0]!r} is not)")
        notes = (f"warning: {barcodes}: {len(missing)} of {len(wanted)} barcodes have no fragment in {path.name}",) \
            if missing else ()
        kept = [b for b in wanted if b in code_of]
        return np.array([code_of[b] for b in kept], dtype=np.int64), kept, notes
    keep = np.flatnonzero(fragments >= min_fragments)
    if keep.size == 0:
        fail(path, f"no barcode has >= {min_fragments} fragments (the most is {int(fragments.max())}): lower "
                   "--min-fragments or give the cells with --barcodes")
    keep = keep[np.argsort([seen[i] for i in keep], kind="stable")]  # sorted, as Cell Ranger lists barcodes
    cells = [seen[i] for i in keep]
    return keep, cells, (f"{path}: {len(cells):,} of {len(seen):,} barcodes have >= {min_fragments} fragments: the "
                         "cells",)


def partition_fragments(path, folder, peaks=None, tile_size: int | None = None, barcodes=None, min_fragments: int = 200,
                        counting: str = "paired-insertion", block_cells: int = 2048, chunk_lines: int = CHUNK_LINES,
                        progress: bool = True):
    """A fragment file's counts as blocks of cells, never the whole matrix in memory: what an on-disk store is written
    from (`scatac.io.convert_to_store`). The same counts, cells and features as `count_fragments`.

    Two passes over the file: the first checks every line and counts each barcode's fragments, which decides the
    cells and their rows; the second counts the hits and appends each one's (row, feature) to a file in `folder` per
    block of `block_cells` cells (8 bytes a hit). Memory follows a chunk of lines and, when read back, one block.

    Parameters
    ----------
    path : str or Path
        A fragment file (chrom, start, end, barcode, count; `#` comments first), plain or compressed.
    folder : str or Path
        An empty folder for the blocks' hits (the caller removes it: a temporary folder beside the store).
    peaks, tile_size, barcodes, min_fragments, counting, chunk_lines, progress
        As `count_fragments` takes them.
    block_cells : int
        Cells a block.

    Returns
    -------
    cells : list of str
        (n_cells,) the cells, in the order `count_fragments` gives them.
    features : list of str
        (n_features,) the peaks' or tiles' names.
    notes : tuple of str
        What the run should say.
    blocks : callable
        `blocks()` yields the counts, (block_cells, n_features) float32 CSR blocks (the last one shorter), in the
        cells' order; it can be called again for another pass.
    """
    path, folder = Path(path), Path(folder)
    features = _features(path, peaks, tile_size, counting)
    code_of, chrom_order = {}, {}
    fragments = np.zeros(0, np.int64)
    for lines_barcode, counted, _, _ in _chunk_hits(path, None, counting, chunk_lines, progress, code_of, chrom_order):
        fragments = _add_fragments(fragments, lines_barcode, counted, len(code_of))
    cell_codes, cells, notes = _cells(path, code_of, fragments, barcodes, min_fragments)
    row_of_code = np.full(len(code_of), -1, dtype=np.int64)
    row_of_code[cell_codes] = np.arange(len(cell_codes))
    n_blocks = -(-len(cells) // block_cells)
    for _, _, codes, columns in _chunk_hits(path, features, counting, chunk_lines, progress, code_of, chrom_order):
        rows = row_of_code[codes]
        kept = rows >= 0
        rows, columns = rows[kept], columns[kept]
        block_of = rows // block_cells
        order = np.argsort(block_of, kind="stable")
        pairs = np.column_stack([rows[order], columns[order]]).astype(np.int32)
        bounds = np.searchsorted(block_of[order], np.arange(n_blocks + 1))
        for block in np.flatnonzero(np.diff(bounds)):
            with open(folder / f"{block}.hits", "ab") as handle:
                handle.write(pairs[bounds[block]:bounds[block + 1]].tobytes())
    if isinstance(features, Tiles):
        order, feature_names = features.order_and_names(chrom_order)
        column_of = np.empty(len(order), dtype=np.int64)
        column_of[order] = np.arange(len(order))  # genome-ordered column of each tile numbered as first touched
    else:
        feature_names, column_of = features.names, None
    n_features = max(len(feature_names), 1)

    def blocks():
        for block in range(n_blocks):
            first, n_rows = block * block_cells, min(block_cells, len(cells) - block * block_cells)
            hits = folder / f"{block}.hits"
            pairs = np.fromfile(hits, dtype=np.int32).reshape(-1, 2) if hits.exists() else np.zeros((0, 2), np.int32)
            columns = pairs[:, 1].astype(np.int64)
            if column_of is not None:
                columns = column_of[columns]
            # duplicates (a cell's hits in one feature) are summed into its count
            yield sp.csr_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0].astype(np.int64) - first, columns)),
                                shape=(n_rows, n_features))

    return cells, feature_names, notes, blocks


def _fold(total, parts, n_rows):
    """Add the (rows, columns) hits of `parts` into `total`, a CSR of n_rows rows (columns grow as tiles appear)."""
    if not parts:
        return total if total is not None else sp.csr_matrix((n_rows, 1), dtype=np.float32)
    rows = np.concatenate([r for r, _ in parts])
    columns = np.concatenate([c for _, c in parts])
    n_columns = max(int(columns.max()) + 1, total.shape[1] if total is not None else 1)
    added = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, columns)), shape=(n_rows, n_columns))
    if total is None:
        return added
    total.resize((n_rows, n_columns))  # `total` is ours alone: grown in place, not copied
    return total + added


__all__ = ["count_fragments", "is_fragment_file", "is_fragment_input", "partition_fragments", "Peaks", "Tiles"]
