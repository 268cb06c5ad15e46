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
    """Simulate a scATAC-seq count matrix whose cell types open their own peaks (the demo data, the tests).

    Each type gets a random set of `specific_fraction` of the peaks where its accessibility is raised; cells draw a
    log-normal depth; open peaks are Bernoulli draws from a per-cell, per-peak probability, a few of them with count 2.
    Built chunk by chunk in CSR, never dense: the cost is O(non-zeros).

    Parameters
    ----------
    n_cells, n_peaks : int
        The matrix's shape.
    n_types : int
        Cell types (type_A, type_B, ...).
    density : float
        The mean fraction of open peaks per cell.
    specific_fraction : float
        The share of peaks each type raises.
    seed : int
        Every draw's seed.
    chunk_cells : int
        Cells built at a time.

    Returns
    -------
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) float32 counts.
    labels : numpy.ndarray
        (n_cells,) type names.
    barcodes : list of str
        (n_cells,) cell names.
    peaks : list of str
        (n_peaks,) peak names, chrN:start-end, 500 bases wide.
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
    """Write a Cell Ranger ATAC fragments.tsv.gz whose counting is known exactly, from counts X.

    Each count of X becomes one fragment with both ends inside its peak; a `straddle_fraction` of them become fragments
    with one end inside the peak and the other past its end (in the gap before the next peak); each cell also gets
    Poisson(`background_per_cell`) fragments between peaks, and `n_empty_barcodes` barcodes a few such fragments only
    (not cells). Peaks are the simulator's chrN:start-end, 500 bases apart. Lines are sorted by chrom and start, after
    '#' header lines, with a duplicate count in the fifth column, as Cell Ranger writes them.

    Parameters
    ----------
    path : str or Path
        The file to write (gzip-compressed).
    X : scipy.sparse.csr_matrix
        (n_cells, n_peaks) counts, as `simulate_atac` gives them.
    barcodes : sequence of str
        (n_cells,) the cells' names.
    peaks : sequence of str
        (n_peaks,) the peaks' names (chrN:start-end).
    straddle_fraction : float
        The share of fragments with one end past their peak.
    background_per_cell : float
        The mean number of fragments between peaks per cell.
    n_empty_barcodes : int
        Barcodes with a few background fragments only (empty droplets).
    seed : int
        Every draw's seed.
    chunk_cells : int
        Cells written at a time.

    Returns
    -------
    dict
        The expected counts per counting strategy: {"paired-insertion", "insertion", "fragment"} -> CSR
        (n_cells, n_peaks), what `scatac.io.fragments.count_fragments` must give.
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


SIMULATE_CHUNK_CELLS = 4096  # cells whose open peaks one generator draws (simulate_store)


def _alias_table(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table of a distribution over n outcomes (Vose's construction): draw a column uniformly, keep
    it with probability `keep[column]`, else take `alias[column]`; O(1) per draw, where a search in the cumulative
    distribution costs O(log n) scattered reads. Returns (keep (n,) float64, alias (n,) int32)."""
    n = len(probabilities)
    scaled = probabilities * (n / probabilities.sum())
    keep = np.ones(n, dtype=np.float64)
    alias = np.arange(n, dtype=np.int32)
    small = list(np.flatnonzero(scaled < 1.0))
    large = list(np.flatnonzero(scaled >= 1.0))
    while small and large:
        low, high = small.pop(), large.pop()
        keep[low], alias[low] = scaled[low], high
        scaled[high] -= 1.0 - scaled[low]
        (small if scaled[high] < 1.0 else large).append(high)
    return keep, alias  # what is left in either list is kept with probability 1 (rounding)


def _draws_for_distinct(probabilities: np.ndarray, distinct: float) -> float:
    """How many draws (with replacement) from `probabilities` give `distinct` different outcomes on average:
    the root of sum(1 - (1 - p)^m) = distinct, by bisection (the sum grows with m)."""
    log_miss = np.log1p(-np.minimum(probabilities, 1 - 1e-12))
    low, high = distinct, 2.0 * distinct
    while np.sum(-np.expm1(high * log_miss)) < distinct and high < 1e3 * len(probabilities):
        low, high = high, 2 * high
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if np.sum(-np.expm1(middle * log_miss)) < distinct else (low, middle)
    return (low + high) / 2


def simulate_store(path, n_cells: int, n_peaks: int, density: float = 0.005, *, n_types: int = 5,
                   specific_fraction: float = 0.3, seed: int = 0, block_cells: int = 16384, dtype=np.uint8,
                   progress: bool = True):
    """Write a simulated scATAC-seq store (`scatac.io.store`) of binary counts block by block, never holding the matrix.

    Cells belong to `n_types` types. Each type has its own distribution over peaks: a shared baseline (how open each
    peak is in general, gamma distributed) times a boost of 4 to 10 on a random `specific_fraction` of the peaks, as
    `simulate_atac` draws them. A cell draws Poisson(density x n_peaks x depth) peaks from its type's distribution
    (depth: log-normal, mean 1), and the distinct peaks drawn are its open peaks. The draws are scaled up per type by as
    many as peaks drawn twice take away, so that a cell has density x n_peaks open peaks on average (times its depth).
    Values are 1, of `dtype`.

    Parameters
    ----------
    path : str or Path
        The store to write (staged beside it, renamed into place when complete).
    n_cells, n_peaks : int
        The matrix's shape.
    density : float
        The expected fraction of open peaks per cell.
    n_types : int
        Cell types, written as obs["label"] (type_A, type_B, ...).
    specific_fraction : float
        The share of peaks each type boosts.
    seed : int
        The types' distributions and each cell's type and depth come from default_rng(seed); the open peaks of the
        cells of chunk j (SIMULATE_CHUNK_CELLS consecutive cells) from default_rng([seed, j]). So the matrix is a
        function of (seed, n_cells, n_peaks, density, n_types, specific_fraction) only: `block_cells` changes neither
        it nor its draws.
    block_cells : int
        Cells per block written (rounded up to whole chunks); memory grows with it.
    dtype : numpy dtype
        The stored values' type: uint8 takes a quarter of float32's space (a store reads as float32 either way).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    Path
        The store: X (n_cells, n_peaks) CSR, obs["label"] the types, barcodes cell_0000000..., peaks chrN:start-end as
        `simulate_atac` names them.
    """
    from .io.store import write_store

    if n_cells < 1 or n_peaks < 2 or not 0 < density < 1 or n_types < 1:
        raise ValueError("simulate_store needs n_cells >= 1, n_peaks >= 2, 0 < density < 1, n_types >= 1")
    rng = np.random.default_rng(seed)
    base = rng.gamma(shape=0.6, scale=1.0, size=n_peaks)
    n_specific = int(specific_fraction * n_peaks)
    keep_of_type = np.empty((n_types, n_peaks), dtype=np.float64)
    alias_of_type = np.empty((n_types, n_peaks), dtype=np.int32)
    draws_per_open = np.ones(n_types)
    for t in range(n_types):
        profile = base.copy()
        chosen = rng.choice(n_peaks, size=n_specific, replace=False)
        profile[chosen] *= rng.uniform(4.0, 10.0, size=n_specific)
        keep_of_type[t], alias_of_type[t] = _alias_table(profile)
        # draws per cell such that the distinct peaks drawn, not the draws, average density * n_peaks
        draws_per_open[t] = _draws_for_distinct(profile / profile.sum(), density * n_peaks) / (density * n_peaks)
    type_of_cell = rng.integers(0, n_types, size=n_cells).astype(np.int16)
    depth = np.exp(rng.normal(0, 0.5, size=n_cells)).astype(np.float32)
    depth /= depth.mean()
    type_names = np.array([f"type_{chr(ord('A') + t)}" if t < 26 else f"type_{t}" for t in range(n_types)])

    def chunk(index: int) -> sp.csr_matrix:
        start = index * SIMULATE_CHUNK_CELLS
        stop = min(start + SIMULATE_CHUNK_CELLS, n_cells)
        draws_rng = np.random.default_rng([seed, index])
        n_draws = draws_rng.poisson(density * n_peaks * depth[start:stop] * draws_per_open[type_of_cell[start:stop]])
        # keys cell * n_peaks + peak fit 32 bits in all but huge chunks: half the sort's memory traffic
        key_type = np.int32 if (stop - start) * n_peaks < 2**31 else np.int64
        keys = []
        for t in range(n_types):  # one type's tables at a time: a gather from one table stays in cache
            cells_of_type = np.flatnonzero(type_of_cell[start:stop] == t).astype(key_type)
            cell = np.repeat(cells_of_type, n_draws[cells_of_type])
            column = draws_rng.integers(0, n_peaks, size=len(cell), dtype=key_type)
            kept = draws_rng.random(len(cell)) < keep_of_type[t][column]
            keys.append(cell * key_type(n_peaks) + np.where(kept, column, alias_of_type[t][column]))
        keys = np.concatenate(keys)
        keys.sort()
        # distinct (cell, peak) pairs in CSR order: a peak drawn twice is open once
        pairs = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
        rows, columns = np.divmod(pairs, n_peaks)
        indptr = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=stop - start), out=indptr[1:])
        return sp.csr_matrix((np.ones(len(pairs), dtype=dtype), columns.astype(np.int32), indptr),
                             shape=(stop - start, n_peaks))

    chunks_per_block = max(1, -(-block_cells // SIMULATE_CHUNK_CELLS))
    n_chunks = -(-n_cells // SIMULATE_CHUNK_CELLS)

    def blocks():
        for first in range(0, n_chunks, chunks_per_block):
            parts = [chunk(index) for index in range(first, min(first + chunks_per_block, n_chunks))]
            yield parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")

    barcodes = [f"cell_{i:07d}" for i in range(n_cells)]
    peaks = [f"chr{1 + (i % 22)}:{10000 + 1000 * (i // 22)}-{10500 + 1000 * (i // 22)}" for i in range(n_peaks)]
    settings = dict(n_cells=n_cells, n_peaks=n_peaks, density=density, n_types=n_types,
                    specific_fraction=specific_fraction, seed=seed)
    return write_store(blocks(), path, barcodes=barcodes, peaks=peaks, labels=type_names[type_of_cell],
                       uns={"scatac": {"source": "scatac.simulate.simulate_store", "simulation": settings}},
                       dtype=dtype, progress=progress)


__all__ = ["simulate_atac", "simulate_fragments", "simulate_store"]
