"""bench/shuffle.py: what streaming in blocks costs in ARI against a full shuffle in memory (issue 22).

    python bench/shuffle.py [--dataset hemato4k] [--seeds 3] [--block-cells 256] [--by-type] [--out shuffle.tsv]

The data set (a labelled folder under ../shared/data, or a path) is read and filtered as a script does, then
written to an on-disk store in a temporary folder (cell by cell in the file's order, or with --by-type grouped
type by type: the hard case for block shuffling, as an atlas written sample by sample). The AE is then
trained at its defaults, except that the neighbour term is off in both (streaming has none), once from
memory (every epoch a full permutation of the cells) and once streamed from the store (blocks of
--block-cells cells in random order, four to a buffer, the buffer shuffled), at each seed; each fit is
clustered with K-means (k = the types) and scored. Prints one table: mode, seed, ARI, 15-NN purity,
seconds, then the mean (sd) of each mode.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "data"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="hemato4k", help="a folder under ../shared/data, or a labelled folder")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--block-cells", type=int, default=256, help="cells a block of the store (default 256)")
    parser.add_argument("--by-type", action="store_true", help="write the store's cells grouped by type")
    parser.add_argument("--out", default=None, help="also write the table here (tab-separated)")
    args = parser.parse_args(argv)

    import anndata

    import scatac
    from scatac import files, streamed
    from scatac.io.store import write_store

    folder = Path(args.dataset) if Path(args.dataset).exists() else SHARED / args.dataset
    adata = scatac.read(folder, labels=folder / "labels.txt", verbose=False)
    scatac.pp.filter(adata, verbose=False)
    if args.by_type:
        adata = adata[np.argsort(adata.obs["label"].to_numpy(), kind="stable")].copy()
    labels = adata.obs["label"].to_numpy()
    runs = int((labels[1:] != labels[:-1]).sum()) + 1
    print(f"shuffle: {adata.n_obs} cells, {runs} runs of one type in the store's order", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="shuffle_") as tmp:
        store = Path(tmp) / "cells.h5ad"
        X = adata.X.tocsr()
        write_store((X[i:i + 1000] for i in range(0, X.shape[0], 1000)), store, barcodes=list(adata.obs_names),
                    peaks=list(adata.var_names), labels=list(labels), progress=False)
        streamed.StoredData.stream_block_cells = args.block_cells
        for seed in range(args.seeds):
            for mode in ("memory", "streamed"):
                target = adata.copy() if mode == "memory" else anndata.read_h5ad(store, backed="r")
                started = time.perf_counter()
                scatac.tl.ae(target, 10, seed=seed, neighbor_weight=0.0, progress=False)
                seconds = time.perf_counter() - started
                scores = scatac.tl.cluster(target, use_rep="X_AE", labels_key="label", seed=seed)
                rows.append([mode, seed, scores["ARI"], scores["knn_purity"], seconds])
                print(f"shuffle: {mode} seed {seed}: ARI {scores['ARI']:.3f}", file=sys.stderr, flush=True)
    header = ["mode", "seed", "ARI", "knn_purity", "train_s"]
    lines = ["\t".join(header)] + ["\t".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) for row in rows]
    for mode in ("memory", "streamed"):
        ari = np.array([row[2] for row in rows if row[0] == mode])
        purity = np.array([row[3] for row in rows if row[0] == mode])
        lines.append(f"{mode}\tmean (sd)\t{ari.mean():.3f} ({ari.std(ddof=1) if len(ari) > 1 else 0:.3f})"
                     f"\t{purity.mean():.3f}\t")
    print("\n".join(lines))
    if args.out:
        files.write_table(args.out, header, [row for row in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
