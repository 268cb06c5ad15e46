"""The project's simulator of scATAC-seq counts: cell types that open their own peaks (demo data, benchmarks, tests)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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


def simulate_fragments(path, X, barcodes, peaks, straddle_fraction: float = 0.1, background_per_cell: float = 2.0,
                       n_empty_barcodes: int = 0, seed: int = 0, chunk_cells: int = 20000):
    """Write a Cell Ranger ATAC fragments.tsv.gz whose counting is known exactly, from counts X (cells x peaks).

    Each count of X becomes one fragment with both ends inside its peak; a `straddle_fraction` of them become
    fragments with one end inside the peak and the other past its end (in the gap before the next peak); each cell
    also gets Poisson(`background_per_cell`) fragments between peaks, and `n_empty_barcodes` barcodes a few such
    fragments only (not cells). Peaks are the simulator's chrN:start-end, 500 bases apart. Lines are sorted by
    chrom and start, after '#' header lines, with a duplicate count in the fifth column, as Cell Ranger writes them.

    Returns the expected counts per strategy: {"paired-insertion", "insertion", "fragment"} -> CSR cells x peaks.
    """
    import gzip

    import pandas as pd

    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(X)
    chrom = np.array([p.split(":")[0] for p in peaks])
    start = np.array([int(p.split(":")[1].split("-")[0]) for p in peaks])
    end = np.array([int(p.split("-")[1]) for p in peaks])
    gap = 500  # between the simulator's peaks
    inside_all = []
    straddles = sp.csr_matrix(X.shape, dtype=np.float32)
    frames = []
    for first in range(0, X.shape[0], chunk_cells):
        block = X[first:first + chunk_cells].tocoo()
        cells = np.repeat(block.row + first, block.data.astype(np.int64))
        peak = np.repeat(block.col, block.data.astype(np.int64))
        straddle = rng.random(len(peak)) < straddle_fraction
        width = end[peak] - start[peak]
        length = rng.integers(50, 300, size=len(peak))
        frag_start = start[peak] + (rng.random(len(peak)) * (width - length)).astype(np.int64)
        frag_end = frag_start + length
        # one end inside the peak's last 100 bases, the other in the gap after it
        frag_start[straddle] = end[peak[straddle]] - rng.integers(1, 100, size=straddle.sum())
        frag_end[straddle] = end[peak[straddle]] + rng.integers(1, gap - 50, size=straddle.sum())
        n_background = rng.poisson(background_per_cell, size=block.shape[0])
        bg_cells = np.repeat(np.arange(block.shape[0]) + first, n_background)
        bg_peak = rng.integers(0, len(peaks), size=len(bg_cells))
        bg_start = end[bg_peak] + rng.integers(10, 200, size=len(bg_cells))
        bg_end = bg_start + rng.integers(50, 250, size=len(bg_cells))
        frames.append(pd.DataFrame({"chrom": np.concatenate([chrom[peak], chrom[bg_peak]]),
                                    "start": np.concatenate([frag_start, bg_start]),
                                    "end": np.concatenate([frag_end, bg_end]),
                                    "cell": np.concatenate([cells, bg_cells])}))
        inside_all.append((cells[straddle], peak[straddle]))
    for cells, peak in inside_all:
        straddles = straddles + sp.csr_matrix((np.ones(len(cells), np.float32), (cells, peak)), shape=X.shape)
    names = np.array(list(barcodes) + [f"empty_{i:05d}" for i in range(n_empty_barcodes)])
    if n_empty_barcodes:
        few = rng.integers(1, 5, size=n_empty_barcodes)  # empty droplets: a handful of fragments
        empty_cells = np.repeat(np.arange(n_empty_barcodes) + X.shape[0], few)
        empty_peak = rng.integers(0, len(peaks), size=len(empty_cells))
        empty_start = end[empty_peak] + rng.integers(10, 200, size=len(empty_cells))
        frames.append(pd.DataFrame({"chrom": chrom[empty_peak], "start": empty_start,
                                    "end": empty_start + rng.integers(50, 250, size=len(empty_cells)),
                                    "cell": empty_cells}))
    table = pd.concat(frames, ignore_index=True)
    table["chrom_order"] = table["chrom"].str[3:].astype(int)
    table = table.sort_values(["chrom_order", "start", "end"], kind="stable")
    table["barcode"] = names[table["cell"].to_numpy()]
    table["count"] = rng.integers(1, 4, size=len(table))
    with gzip.open(path, "wt", compresslevel=1) as handle:
        handle.write("# id=simulated\n# description=scatac.simulate.simulate_fragments\n")
        table[["chrom", "start", "end", "barcode", "count"]].to_csv(handle, sep="\t", header=False, index=False)
    inside = (X - straddles).tocsr()  # fragments with both ends in their peak
    inside.eliminate_zeros()
    return {"paired-insertion": (inside + straddles).tocsr(), "insertion": (2 * inside + straddles).tocsr(),
            "fragment": (inside + straddles).tocsr()}
