"""bench/fragments.py: seconds and peak memory of counting a fragment file (issue 14).

    python bench/fragments.py [--fragments 10000000] [--counting paired-insertion,insertion,fragment]
                              [--tile-size 500] [--repeat 2] [--store] [--out fragments.tsv] [--keep DIR]

The project's simulator makes a count matrix (cells x 50,000 peaks, ~500 fragment lines per cell, cells enough
for about `--fragments` lines) and scatac.simulate.simulate_fragments writes it as a Cell Ranger fragments.tsv.gz
(with straddling, background and empty-droplet fragments), then scatac.read counts it once per strategy (and in
tiles with --tile-size), each in its own child process. With --repeat K the default strategy also counts the file
written K times over (K times the lines, the same non-zeros: the matrix stays the size it was, so its peak memory
shows what the file's length costs). With --store the default strategy also writes each file into an on-disk store
(scatac.io.convert_to_store, which counts a fragment file a block of cells at a time). Columns:

  counting      the strategy (or tiles:<size>)
  repeat        how many times over the file holds the simulated fragments
  lines         fragment lines in the file
  seconds       scatac.read wall time (stream, count, select cells, build the AnnData), or the store's writing
  lines_per_s   lines / seconds
  peak_rss_mb   the child's peak RSS over the read (VmHWM), imports included
  base_rss_mb   RSS after imports, before reading
  matrix_mb     data + indices + indptr of the counted CSR (cells x features)
  file_mb       size of the .tsv.gz
  exact         whether the counts equal the simulated ones (peaks only)
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINES_PER_CELL = 505  # measured: fragment lines per simulated cell at ~500 counts, background and empty droplets in
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
import numpy as np, scipy.sparse as sp
import scatac

def rss(kind):
    return int([l.split()[1] for l in open("/proc/self/status") if l.startswith(kind)][0]) / 1024

base = rss("VmRSS:")
options = json.loads(sys.argv[1])
store = options.pop("store", None)
started = time.perf_counter()
if store is None:
    adata = scatac.read(sys.argv[2], min_fragments=50, verbose=False, **options)
else:  # counted into an on-disk store a block of cells at a time; read back whole below only to check it
    scatac.io.convert_to_store(sys.argv[2], store, min_fragments=50, progress=False, **options)
seconds = time.perf_counter() - started
peak = rss("VmHWM:")
if store is not None:
    import anndata
    adata = anndata.read_h5ad(store)
X = adata.X
row = dict(seconds=seconds, peak_rss_mb=peak, base_rss_mb=base,
           matrix_mb=(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20, shape=list(adata.shape))
if "peaks" in options:
    expected = sp.load_npz(sys.argv[3] + "/" + options["counting"] + ".npz") * int(sys.argv[4])
    order = np.argsort([int(b.split("_")[1]) for b in adata.obs_names])
    row["exact"] = bool(expected.shape == X.shape and (X[order] != expected).nnz == 0)
print(json.dumps(row))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fragments", type=int, default=10_000_000, help="about this many fragment lines")
    parser.add_argument("--counting", default="paired-insertion,insertion,fragment")
    parser.add_argument("--tile-size", type=int, default=500, help="also count in tiles of this size (0: not)")
    parser.add_argument("--repeat", type=int, default=2, help="also count the file written this many times over "
                                                                  "(the default strategy; 1: not)")
    parser.add_argument("--out", help="write the table here (tab-separated) as well")
    parser.add_argument("--keep", help="make the file in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--store", action="store_true", help="also write the default strategy's counts into an "
                        "on-disk store (scatac.io.convert_to_store: two passes, a block of cells at a time), once "
                        "per file, rows 'store:<counting>'")
    args = parser.parse_args(argv)

    import scipy.sparse as sp

    from scatac.simulate import simulate_atac, simulate_fragments

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_fragments."))
    folder.mkdir(parents=True, exist_ok=True)
    n_peaks, per_cell = 50_000, 500
    n_cells = max(args.fragments // LINES_PER_CELL, 10)
    started = time.perf_counter()
    X, _, barcodes, peaks = simulate_atac(n_cells, n_peaks, 8, density=per_cell / n_peaks / 1.15, seed=0)
    (folder / "peaks.bed").write_text("".join("{}\t{}\t{}\n".format(p.split(":")[0], *p.split(":")[1].split("-"))
                                              for p in peaks))
    expected = simulate_fragments(folder / "fragments.tsv.gz", X, barcodes, peaks, n_empty_barcodes=n_cells)
    for name, matrix in expected.items():
        sp.save_npz(folder / f"{name}.npz", matrix)
    with gzip.open(folder / "fragments.tsv.gz", "rt") as handle:
        lines = sum(1 for line in handle if not line.startswith("#"))
    print(f"made {folder / 'fragments.tsv.gz'}: {lines:,} lines, {n_cells:,} cells x {n_peaks:,} peaks "
          f"in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    files = {1: folder / "fragments.tsv.gz"}
    if args.repeat > 1:  # gzip members one after another are one valid gzip stream of the lines repeated
        files[args.repeat] = folder / f"fragments_x{args.repeat}.tsv.gz"
        files[args.repeat].write_bytes(files[1].read_bytes() * args.repeat)
    peaks_bed = str(folder / "peaks.bed")
    runs = [({"peaks": peaks_bed, "counting": c}, 1) for c in args.counting.split(",")]
    if args.tile_size:
        runs.append(({"tile_size": args.tile_size, "counting": "paired-insertion"}, 1))
    if args.repeat > 1:
        runs.append(({"peaks": peaks_bed, "counting": "paired-insertion"}, args.repeat))
    if args.store:
        runs += [({"peaks": peaks_bed, "counting": "paired-insertion", "store": str(folder / f"x{repeat}.store.h5ad")},
                  repeat) for repeat in sorted(files)]
    header = ["counting", "repeat", "lines", "seconds", "lines_per_s", "peak_rss_mb", "base_rss_mb", "matrix_mb",
              "file_mb", "exact"]
    rows = []
    for options, repeat in runs:
        done = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), json.dumps(options),
                               str(files[repeat]), str(folder), str(repeat)], capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        name = options["counting"] if "peaks" in options else f"tiles:{options['tile_size']}"
        name = f"store:{name}" if "store" in options else name
        rows.append([name, repeat, lines * repeat, f"{result['seconds']:.1f}",
                     f"{lines * repeat / result['seconds']:,.0f}", f"{result['peak_rss_mb']:.0f}",
                     f"{result['base_rss_mb']:.0f}", f"{result['matrix_mb']:.0f}",
                     f"{files[repeat].stat().st_size / 2**20:.0f}", result.get("exact", "")])
        print("\t".join(map(str, rows[-1])), file=sys.stderr)
    table = "\n".join("\t".join(map(str, row)) for row in [header, *rows]) + "\n"
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
