"""bench/quality.py: clustering quality of each method on the real labelled data sets.

    python bench/quality.py [--datasets hemato600,schep600] [--methods AE,VAE,...] [--seeds 1] [--out table.tsv]

A thin use of compare.py: the same loading, filtering, fitting and scoring path,
run over several data sets, with LSI (TF-IDF + truncated SVD, as Signac and ArchR
do it) in the same run as the reference, and SnapATAC2's spectral embedding when
snapatac2 is importable. Prints one table (method, dataset, ARI, NMI, F1,
silhouette, seconds) and writes it with --out.
"""
import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import common  # noqa: E402
import compare  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="hemato600,schep600",
                        help="comma-separated names under ../shared/data, or paths to labelled folders (labels.txt inside)")
    parser.add_argument("--methods", default="AE", help=f"comma-separated subset of {','.join(compare.METHODS)} (LSI always added)")
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the table here (tab-separated)")
    parser.add_argument("--no-snapatac2", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", default="", help="per-method epochs, e.g. AE=100,VAE=150,StackedAE=30:100")
    parser.add_argument("--transform", default=None, choices=common.TRANSFORMS, help="input transform for the autoencoders")
    args, extra = parser.parse_known_args(argv)

    methods = compare.parse_methods(args.methods) + ["LSI"]
    if not args.no_snapatac2 and compare.snapatac2_available():
        methods.append("SnapATAC2")
    options = {"epochs": {}, "transform": args.transform, "extra": {}}
    for item in filter(None, args.epochs.split(",")):
        name, value = item.split("=")
        options["epochs"][name] = tuple(int(v) for v in value.split(":")) if ":" in value else int(value)
    for method in compare.NEURAL:
        options["extra"][method] = extra  # unknown flags go to the neural scripts (e.g. --hidden-dims 256 64)
    device = common.select_device(args.device)
    filter_args = argparse.Namespace(label_key=None, min_cells_per_peak=3, max_cells_per_peak=1.0, min_peaks_per_cell=10)

    rows = []
    for name in filter(None, args.datasets.split(",")):
        folder = Path(name) if Path(name).exists() else SHARED / name
        dataset = common.prepare_dataset(folder, folder / "labels.txt", filter_args)
        results = compare.run_comparison(dataset, methods, args.latent_dim, list(range(args.seeds)), device, options)
        for row in compare.summarize(results, methods):
            rows.append({"dataset": folder.name, **row})
    columns = ["method", "dataset", "ARI_mean", "NMI_mean", "F1_mean", "silhouette_mean", "ARI_std", "train_s", "status"]
    table = compare.render_table(rows, columns)
    print(table)
    if args.out:
        common.write_table(args.out, columns, [[compare.format_cell(r[c]) for c in columns] for r in rows])
    return rows


if __name__ == "__main__":
    common.run_cli(main)
