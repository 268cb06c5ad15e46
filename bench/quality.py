"""bench/quality.py: clustering quality of each method on the real labelled data sets.

    python bench/quality.py [--datasets hemato600,schep600,hemato4k,cerebellum801] [--methods AE,VAE,...] [--seeds 1] [--out table.tsv]
                            [--epochs AE=100,StackedAE=30:100] [--transform binary] [--hidden-dims 256 64 ...]
                            [--n-top-peaks 5000] [--thin-to 300]

A thin use of compare.py: the same loading, filtering, fitting and scoring path, run over several
data sets, with the references in the same run: LSI (TF-IDF + truncated SVD, as Signac and ArchR do it)
at the latent size and at Signac's defaults, and SnapATAC2's spectral embedding the same two ways when
snapatac2 is importable. Every method is scored with K-means, with Leiden and with spectral clustering on
Leiden's neighbour graph, and by the purity of each cell's nearest neighbours (no clustering). Other --flags are
options of the methods (e.g. --neighbor-weight, --graph-weight), given to each one that declares them. Prints one table (method,
dataset, ARI with K-means and with Leiden, NMI, F1, silhouette, seconds) and writes it with --out.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import compare  # noqa: E402
from scatac import cli, files, methods, params  # noqa: E402
from scatac.errors import fail  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def epochs_options(text: str) -> dict:
    """'AE=100,StackedAE=30:100' -> {'AE': {'epochs': 100}, 'StackedAE': {'pretrain_epochs': 30, 'finetune_epochs': 100}}."""
    options = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        method = methods.ALL[methods.parse_names(name, [m.name for m in methods.NEURAL], where="--epochs")[0]]
        values = [int(v) for v in value.split(":")]
        if len(values) != len(method.epoch_options):
            fail("--epochs", f"{method.name} takes {len(method.epoch_options)} value(s) ({':'.join(method.epoch_options)}), got {value!r}")
        options[method.name] = dict(zip(method.epoch_options, values))
    return options


def epochs_run(results, method) -> str:
    """The epochs of the last training phase each seed ran (fewer than asked where early stopping stopped it)."""
    runs = [r.adata.uns[method]["epochs_trained"] for r in results if r.method == method and r.status == "ok"
            and "epochs_trained" in r.adata.uns.get(method, {})]
    return ",".join(str(list(trained.values())[-1]) for trained in runs) or "-"


def thin(X, max_open: int, seed: int = 123):
    """X binarized with at most `max_open` open peaks a cell, drawn at random without replacement (cells with fewer
    keep all theirs). Returns a new CSR matrix; X is not changed."""
    import numpy as np
    import scipy.sparse as sp

    X = sp.csr_matrix(X)
    rng = np.random.default_rng(seed)
    kept = [X.indices[start:stop] if stop - start <= max_open else np.sort(rng.choice(X.indices[start:stop], max_open,
                                                                                      replace=False))
            for start, stop in zip(X.indptr[:-1], X.indptr[1:])]
    indptr = np.concatenate([[0], np.cumsum([len(k) for k in kept])])
    indices = np.concatenate(kept) if kept else np.array([], dtype=X.indices.dtype)
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=X.shape)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="hemato600,schep600,hemato4k,cerebellum801",
                        help="comma-separated names under ../shared/data, or paths to labelled folders (labels.txt inside)")
    parser.add_argument("--methods", default="AE", help=f"comma-separated subset of {','.join(compare.METHODS)} (LSI always added)")
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the table here (tab-separated)")
    parser.add_argument("--no-snapatac2", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--device", default="auto", choices=params.DEVICES)
    parser.add_argument("--epochs", default="", help="per-method epochs, e.g. AE=100,VAE=150,StackedAE=30:100")
    parser.add_argument("--n-top-peaks", type=int, default=None,
                        help="after filtering, keep the N peaks open in the most cells (all methods, LSI included)")
    parser.add_argument("--thin-to", type=int, default=None,
                        help="before filtering, keep at most N open peaks a cell, drawn at random (seed 123): the same "
                             "cells and types with less signal a cell, as shallower sequencing gives")
    args, extra = parser.parse_known_args(argv)

    import scatac
    from scatac import runtime

    names = methods.parse_names(args.methods, compare.METHODS, where="--methods") + compare.reference_names(
        not args.no_snapatac2)
    options = epochs_options(args.epochs)
    for method in methods.ALL.values():
        options.setdefault(method.name, {}).update(cli.option_overrides(method, extra))
    device = runtime.select_device(args.device)

    rows = []
    for name in filter(None, args.datasets.split(",")):
        folder = Path(name) if Path(name).exists() else SHARED / name
        adata = scatac.read(folder, labels=folder / "labels.txt")
        if args.thin_to is not None:
            adata.X = thin(adata.X, args.thin_to)
        scatac.pp.filter(adata, n_top_peaks=args.n_top_peaks)
        results = compare.run_comparison(adata, names, args.latent_dim, list(range(args.seeds)), options, device=device,
                                         progress=not args.quiet)
        for row in compare.summarize(results, names):
            rows.append({"dataset": folder.name, **row, "epochs": epochs_run(results, row["method"])})
    columns = ["method", "dataset", "ARI_mean", "ARI_std", "ARI_leiden_mean", "ARI_leiden_std", "ARI_spectral_mean",
               "ARI_spectral_std", "knn_purity_mean", "knn_purity_std", "NMI_mean", "F1_mean", "silhouette_mean",
               "train_s", "epochs", "status"]
    print(compare.render_table(rows, columns))
    if args.out:
        files.write_table(args.out, columns, [[compare.format_cell(r[c]) for c in columns] for r in rows])
    return rows


if __name__ == "__main__":
    cli.run_cli(main)
