"""Make the demo data set with the project's simulator.

    python data/simulate.py [--out data/demo] [--cells 800] [--peaks 3000] [--types 6] [--seed 0]

Writes a 10x-style folder (matrix.mtx.gz peaks x cells, peaks.txt, barcodes.txt, labels.txt)
that every script reads as it reads Cell Ranger ATAC output.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scatac.io import write_10x  # noqa: E402
from scatac.simulate import simulate_atac  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "demo"))
    parser.add_argument("--cells", type=int, default=800)
    parser.add_argument("--peaks", type=int, default=3000)
    parser.add_argument("--types", type=int, default=6)
    parser.add_argument("--density", type=float, default=0.03, help="mean fraction of open peaks per cell")
    parser.add_argument("--specific-fraction", type=float, default=0.03,
                        help="fraction of peaks raised in each cell type")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    X, labels, barcodes, peaks = simulate_atac(args.cells, args.peaks, args.types, args.density,
                                               args.specific_fraction, args.seed)
    write_10x(args.out, X, barcodes, peaks, labels)
    print(f"wrote {X.shape[0]} cells x {X.shape[1]} peaks ({X.nnz / X.shape[0] / X.shape[1]:.1%} non-zero, "
          f"{args.types} types) to {args.out}")


if __name__ == "__main__":
    main()
