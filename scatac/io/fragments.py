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
    return "fragment" in path.name.lower() and without_compression(path.name.lower()).endswith((".tsv", ".bed", ".txt"))


class Peaks:
    """A BED file's intervals, by chromosome, sorted by start: what a position or a fragment overlaps."""

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
    """Fixed-width bins of the genome, numbered as they are first touched (named and ordered at the end)."""

    def __init__(self, size: int):
        self.size = size
        self.keys = {}  # (chrom, bin) -> column

    def _columns(self, chrom, bins):
        unique, inverse = np.unique(bins, return_inverse=True)
        columns = np.array([self.keys.setdefault((chrom, int(b)), len(self.keys)) for b in unique], dtype=np.int64)
        return columns[inverse]

    def at(self, chrom, positions):
        return np.arange(len(positions)), self._columns(chrom, positions // self.size)

    def overlapping(self, chrom, starts, ends):
        first = starts // self.size
        spans = (ends - 1) // self.size - first + 1  # bins each fragment touches
        rows = np.repeat(np.arange(len(starts)), spans)
        offsets = np.arange(len(rows)) - np.repeat(np.cumsum(spans) - spans, spans)
        return rows, self._columns(chrom, np.repeat(first, spans) + offsets)

    def order_and_names(self, chrom_order: dict):
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
    """The cells x features counts of a fragment file: (X CSR float32, barcodes, feature names, notes).

    peaks: a BED file of the features; else tile_size: bins of that width. barcodes: a file of the cells to keep
    (one per line, first column); else the barcodes with >= min_fragments fragments (chrM not counted).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    path = Path(path)
    if counting not in COUNTING:
        fail("--counting", f"must be one of {', '.join(COUNTING)}, got {counting!r}")
    if (peaks is None) == (tile_size is None):
        fail(path, "a fragment file needs --peaks PEAKS.bed or --tile-size N (one of them) to count fragments in")
    features = Peaks(Path(peaks)) if peaks is not None else Tiles(int(tile_size))
    wanted = None
    if barcodes is not None:
        wanted = list(dict.fromkeys(line.split("\t")[0].strip() for line in read_lines(Path(barcodes)) if line.strip()))
    code_of = {}  # barcode -> row of `total`
    fragments = np.zeros(0, np.int64)
    total, parts, chrom_order = None, [], {}
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
            rows_barcode = lookup[chunk["barcode"].cat.codes.to_numpy()]
            starts, ends = chunk["start"].to_numpy(), chunk["end"].to_numpy()
            if (ends <= starts).any():
                fail(path, "has a fragment whose end is not after its start: not a fragment file (chrom, start, end, "
                           "barcode, count)")
            chroms = chunk["chrom"]
            counted = ~chroms.isin(MITOCHONDRIA).to_numpy()
            fragments = np.pad(fragments, (0, len(code_of) - len(fragments)))
            fragments += np.bincount(rows_barcode[counted], minlength=len(code_of))
            all_rows, all_columns = [], []
            codes = chroms.cat.codes.to_numpy()
            for code, chrom in enumerate(chroms.cat.categories):
                chrom_order.setdefault(chrom, len(chrom_order))
                which = np.flatnonzero(codes == code)
                if which.size == 0:
                    continue
                rows, columns = _hits(features, chrom, starts[which], ends[which], counting)
                all_rows.append(rows_barcode[which[rows]])
                all_columns.append(columns)
            if all_rows:
                rows, columns = np.concatenate(all_rows), np.concatenate(all_columns)
                parts.append((rows, columns))
            if sum(len(r) for r, _ in parts) > chunk_lines:  # fold into the running sum
                total = _fold(total, parts, len(code_of))
                parts = []
        bar.close()
    except InputError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, *READ_ERRORS) as exc:
        problem = read_problem(exc) if isinstance(exc, READ_ERRORS) else f"cannot be parsed as a fragment file " \
            f"(chrom, start, end, barcode, count) ({exc.__class__.__name__}: {exc})".replace("\n", " ")
        fail(path, problem)
    if not code_of:
        fail(path, "has no fragments")
    total = _fold(total, parts, len(code_of))
    n_features = len(features.names) if isinstance(features, Peaks) else len(features.keys)
    total.resize((len(code_of), max(n_features, 1)))
    seen = list(code_of)
    notes = []
    if wanted is not None:
        missing = [b for b in wanted if b not in code_of]
        if len(missing) == len(wanted):
            fail(barcodes, f"none of its {len(wanted)} barcodes is in {path.name} (e.g. {wanted[0]!r} is not)")
        if missing:
            notes.append(f"warning: {barcodes}: {len(missing)} of {len(wanted)} barcodes have no fragment in {path.name}")
        rows = np.array([code_of.get(b, -1) for b in wanted])
        kept = [b for b in wanted if b in code_of]
        X = total[rows[rows >= 0]]
        cells = kept
    else:
        keep = np.flatnonzero(fragments >= min_fragments)
        if keep.size == 0:
            fail(path, f"no barcode has >= {min_fragments} fragments (the most is {int(fragments.max())}): lower "
                       "--min-fragments or give the cells with --barcodes")
        keep = keep[np.argsort([seen[i] for i in keep], kind="stable")]  # sorted, as Cell Ranger lists barcodes
        X = total[keep]
        cells = [seen[i] for i in keep]
        notes.append(f"{path}: {len(cells):,} of {len(seen):,} barcodes have >= {min_fragments} fragments: the cells")
    if isinstance(features, Tiles):
        columns, feature_names = features.order_and_names(chrom_order)
        X = X[:, columns]
    else:
        feature_names = features.names
    return sp.csr_matrix(X, dtype=np.float32), cells, feature_names, tuple(notes)


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
