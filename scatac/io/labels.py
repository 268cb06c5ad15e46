"""Cell-type labels: a file joined to the barcodes, one label per line in cell order, or an .h5ad's obs column;
refused when they cannot be cell types."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import fail, warn
from .text import read_lines

# more distinct labels than this share of the cells (and than a few dozen) are ids, not cell types
MAX_TYPES_SHARE = 0.5
MAX_TYPES_ALWAYS_PLAUSIBLE = 30


def _plausible(labels: np.ndarray, barcodes: Sequence[str], where) -> np.ndarray:
    """`labels` unless they look like ids: the barcodes themselves, or about one per cell."""
    types = set(labels.tolist())
    known = set(barcodes)
    if sum(label in known for label in types) > 0.5 * len(types):
        fail(where, "its labels are barcodes: expected 'barcode<TAB>label' lines or one label per line")
    if len(types) > MAX_TYPES_ALWAYS_PLAUSIBLE and len(types) > MAX_TYPES_SHARE * len(labels):
        fail(where, f"has {len(types)} different labels for {len(labels)} cells: these look like ids, not cell types "
                    "(expected 'barcode<TAB>label' lines or one label per line)")
    return labels


def _joined(rows: list, barcodes: Sequence[str], path: Path, source) -> np.ndarray:
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


def read_labels(barcodes: Sequence[str], labels_path=None, obs=None, label_key: str | None = None,
                source="data") -> np.ndarray | None:
    """One label per cell, in cell order, from a labels file or an obs column.

    A labels file holds `barcode<TAB>label` lines (a header line is fine), joined by barcode, or one label per line in
    cell order. Lines without a tab that split into a barcode and one word are read as `barcode label` with a warning.
    Labels that cannot be cell types (about one per cell, or the barcodes themselves) are refused.

    Parameters
    ----------
    barcodes : sequence of str
        (n_cells,) the cells, in order.
    labels_path : str, Path or None
        The labels file.
    obs : pandas.DataFrame or None
        An `.h5ad`'s obs, for `label_key`.
    label_key : str or None
        The obs column holding the labels, instead of a file.
    source : str
        What an error names.

    Returns
    -------
    numpy.ndarray or None
        (n_cells,) labels as strings; None when neither `labels_path` nor `label_key` is given.

    Raises
    ------
    scatac.InputError
        Labels that do not match the barcodes, or cannot be cell types.
    """
    if label_key is not None:
        if obs is None:
            fail(source, "--label-key needs an .h5ad input with obs columns")
        if label_key not in obs.columns:
            fail(source, f"obs has no column {label_key!r} (columns: {', '.join(map(str, obs.columns)) or 'none'})")
        column = obs[label_key]
        if column.isna().any():
            fail(source, f"obs column {label_key!r} has {int(column.isna().sum())} cells without a label")
        return _plausible(column.astype(str).to_numpy(), barcodes, f"{source}: obs column {label_key!r}")
    if labels_path is None:
        return None
    path = Path(labels_path)
    if not path.exists():
        fail(path, "no such labels file")
    lines = read_lines(path)
    if not lines:
        fail(path, "labels file is empty")
    if any("\t" in line for line in lines):
        rows = [line.split("\t") for line in lines]
        short = next((i for i, r in enumerate(rows, start=1) if len(r) < 2), None)
        if short is not None:
            fail(path, f"line {short} has no tab while others do: expected 'barcode<TAB>label' on every line")
        return _plausible(_joined(rows, barcodes, path, source), barcodes, path)
    words = [line.split() for line in lines]
    barcode_set = set(barcodes)
    if all(len(w) == 2 for w in words) and sum(w[0] in barcode_set for w in words) >= 0.9 * len(barcodes):
        warn(f"{path}: columns are separated by spaces, not a tab: read as 'barcode label'")
        return _plausible(_joined(words, barcodes, path, source), barcodes, path)
    if len(lines) != len(barcodes):
        fail(path, f"has {len(lines)} labels in cell order but the matrix has {len(barcodes)} cells")
    return _plausible(np.array(lines, dtype=object), barcodes, path)
