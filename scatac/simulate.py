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
