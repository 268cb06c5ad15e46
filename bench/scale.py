"""bench/scale.py: time and memory of each method as the matrix grows (issue 7, "Scale and speed").

    python bench/scale.py [--sizes 10000x100000,50000x100000,100000x100000,hemato4k] [--methods AE,NMF,...]
                          [--decoders full,sampled] [--negatives 4x] [--epochs 1] [--max-batches 0]
                          [--umap] [--export] [--batch-size N] [--profile] [--out scale.tsv] [--quick]
                          [--streamed [--store-dir DIR]] [--density 0.005] [--processes N] [--threads T]

    python bench/scale.py --sizes 250000x100000,1000000x100000 --density 0.005 --streamed --methods AE \
                          --decoders sampled --max-batches 4        # atlas scale: streamed from an on-disk store

For each size the project's simulator (scatac.simulate: binary-ish counts, about 2% non-zero,
several cell types) makes one CSR matrix, written once to an .h5ad in a temporary folder; a size
may also name a labelled data set under ../shared/data (e.g. hemato4k), trained at each method's
own epochs so that its ARI means something. Each method then runs in its own child process
(bench/scale_child.py, so one method's memory does not pollute the next) through the functions a
script runs; each autoencoder once per decoder of --decoders (full and sampled, side by side).
With --streamed each size is instead written as an on-disk store block by block
(scatac.simulate.simulate_store) and the autoencoders train from it streamed (scatac.streamed: cells read in
shuffled blocks, never the whole matrix); with --max-batches the clustering is skipped (the features of a few
batches mean nothing). --processes N runs each autoencoder under torchrun as N CPU processes (gloo on the
loopback); peak_rss_mb is then the largest process's.
Columns:

  data          "simulated", or the shared data set's name
  decoder       the autoencoders' decoder: full (every peak's logit) or sampled (scatac.nn.PeakSampler)
  batch_size    the training batch the autoencoder used (--batch-size, else 'auto': scatac.train.auto_batch_size
                for the method's own epochs, also when --epochs times fewer)
  load_s        scatac.read of the matrix
  epoch_s       seconds per training epoch (neural: train() wall time / epochs; with --max-batches N
                only N batches per epoch are run, batches 2..N timed (the first pays one-off costs)
                and scaled to a full epoch, marked "~" in epoch_note; NMF/LSNMF: seconds per iteration)
  total_s       load + filter + fit (incl. transform, encode) + K-means + scores (+ UMAP with --umap)
  peak_rss_mb   ru_maxrss of the child process (imports, load, fit; the largest process's with --processes)
  base_rss_mb   RSS of the child right after imports, before loading (part of peak_rss_mb)
  csr_mb        data + indices + indptr bytes of the simulated (unfiltered) CSR matrix
  mem_ratio     peak_rss_mb / csr_mb
  within_budget peak RSS <= 3 x CSR + 1 GiB
  umap_s        with --umap: scatac.tl.umap
  export_s      with --export: scatac.export into a temporary folder (feature.txt, clusters, scores,
                confusion, umap.txt, result.h5ad with the counts, run.json, and the figures)
  achieved_gflops (AE only) FLOPs of the AE's layers per second over the training epoch: the dense
                nn.Linear products plus the sparse first layer's 2 x nnz x 512 (forward and grad-weight)
  mm_gflops     what plain torch.mm reaches, in the same process, on the dense layers' shapes at the
                training batch size (forward, grad-input and grad-weight products)
  mm_efficiency achieved_gflops / mm_gflops (not with --streamed: the reference products' own batch x n_peaks
                matrices would be most of a streamed run's memory)
  allreduce_s   with --processes N: one all-reduce across the ranks of a gradient the size of the model's
                parameters (gloo on CPU), what DistributedDataParallel adds to each step
  allreduce_share allreduce_s / the seconds of one step
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import compare  # noqa: E402  (light: no torch)
from scatac import files, methods, params  # noqa: E402
from scatac.errors import InputError  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
ALL_METHODS = tuple(methods.ALL) + ("LSI",)
NEURAL = tuple(m.name for m in methods.NEURAL)
DEFAULT_SIZES = "10000x100000,50000x100000,100000x100000"
QUICK_SIZES = "2000x5000,4000x5000"
COLUMNS = ["data", "n_cells", "n_peaks", "processes", "threads", "method", "decoder", "batch_size", "cells_kept", "peaks_kept", "nnz", "csr_mb", "load_s", "filter_s", "fit_s",
           "epochs", "epoch_s", "epoch_note", "eval_s", "umap_s", "export_s", "total_s", "base_rss_mb", "peak_rss_mb", "mem_ratio",
           "within_budget", "mm_gflops", "achieved_gflops", "mm_efficiency", "allreduce_s", "allreduce_share", "ARI",
           "status"]


# --------------------------------------------------------------------------
# Parent: simulate, write, run each method in a child
# --------------------------------------------------------------------------
def parse_sizes(text: str) -> list:
    """CELLSxPEAKS items as (cells, peaks), names of labelled folders under ../shared/data as their Path."""
    sizes = []
    for item in filter(None, (i.strip() for i in text.split(","))):
        if (SHARED / item / "labels.txt").exists():
            sizes.append(SHARED / item)
            continue
        cells, _, peaks = item.lower().partition("x")
        try:
            sizes.append((int(cells), int(peaks)))
        except ValueError:
            raise SystemExit(f"scale.py: bad size {item!r}; expected CELLSxPEAKS (e.g. 10000x100000) or a data set "
                             f"under {SHARED}")
    return sizes


def shared_matrix(folder: Path):
    """A real labelled data set: its path and the figures of simulate_to_h5ad."""
    from scatac.io import read_matrix

    X = read_matrix(folder).X
    return folder, {"nnz": int(X.nnz), "csr_mb": (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20,
                    "density": X.nnz / (X.shape[0] * X.shape[1]), "simulate_s": 0.0, "shape": X.shape}


def simulate_to_h5ad(n_cells, n_peaks, density, n_types, folder: Path, seed=0):
    import anndata
    import pandas as pd

    from scatac.simulate import simulate_atac

    started = time.perf_counter()
    X, labels, barcodes, peaks = simulate_atac(n_cells, n_peaks, n_types=n_types, density=density, seed=seed)
    sim_s = time.perf_counter() - started
    csr_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    nnz = int(X.nnz)
    path = folder / f"sim_{n_cells}x{n_peaks}.h5ad"
    adata = anndata.AnnData(X=X, obs=pd.DataFrame({"label": labels}, index=barcodes), var=pd.DataFrame(index=peaks))
    adata.write_h5ad(path)
    del adata, X
    return path, {"nnz": nnz, "csr_mb": csr_bytes / 2**20, "density": nnz / (n_cells * n_peaks), "simulate_s": sim_s}


def simulate_store_once(n_cells, n_peaks, density, n_types, folder: Path, seed=0):
    """A simulated store (scatac.simulate.simulate_store: written block by block, never whole in memory) under
    `folder`, reused when a store of that size and density is already there (--store-dir)."""
    from scatac.io.store import open_store
    from scatac.simulate import simulate_store

    path = folder / f"store_{n_cells}x{n_peaks}_d{density:g}_t{n_types}_s{seed}.h5ad"
    started = time.perf_counter()
    if not path.exists():
        simulate_store(path, n_cells, n_peaks, density, n_types=n_types, seed=seed)
    with open_store(path) as counts:
        nnz = int(counts.nnz)
    # as the CSR matrix it would be in memory: float32 values, int32 peaks, int64 row offsets
    csr_bytes = nnz * 8 + (n_cells + 1) * 8
    return path, {"nnz": nnz, "csr_mb": csr_bytes / 2**20, "density": nnz / (n_cells * n_peaks),
                  "simulate_s": time.perf_counter() - started}


def failure_line(stderr: str | None, returncode: int) -> str:
    """The line of a failed child's stderr that says why: the last exception line (a rank's, under torchrun,
    whose own report ends in banners of '=' and its 'Root Cause' table), else the last non-banner line."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    exceptions = [line for line in lines if re.match(r"^(\[rank\d+\]:\s*)?[\w.]*(Error|Exception|Interrupt)\b", line)
                  and "ChildFailedError" not in line]
    if exceptions:
        return exceptions[-1]
    meaningful = [line for line in lines if not set(line) <= set("=-")]
    return meaningful[-1] if meaningful else f"exit {returncode}"


def run_child(spec: dict, timeout: float | None, processes: int = 1):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
        spec_path = handle.name
    result_path = spec_path + ".out"
    # several processes: torchrun on the loopback, each rank one child (scatac.distributed)
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        "--nproc-per-node", str(processes)]
    try:
        proc = subprocess.run([*launcher, str(Path(__file__).resolve().parent / "scale_child.py"), spec_path, result_path],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(result_path):
            # the whole of the child's (or torchrun's) stderr, so that a failed row can be diagnosed
            print((proc.stderr or "").rstrip()[-6000:], file=sys.stderr)
            return {"status": f"failed: {failure_line(proc.stderr, proc.returncode)[:160]}"}
        with open(result_path) as handle:
            return json.load(handle)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:g} s"}
    finally:
        for p in (spec_path, result_path):
            if os.path.exists(p):
                os.unlink(p)


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def render(rows) -> str:
    return compare.render_table(rows, COLUMNS, lambda value: fmt(value if value != "" else None))


def write_tsv(path, rows):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    files.write_table(path, COLUMNS, ([fmt(r.get(c)) for c in COLUMNS] for r in rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=None, help=f"comma-separated CELLSxPEAKS (default {DEFAULT_SIZES})")
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help=f"subset of {','.join(ALL_METHODS)} (default all)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small run (sizes {QUICK_SIZES}, 1 epoch of 8 batches, few iterations): a few minutes on 2 cores")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs of each neural method (default 1; StackedAE: per stage)")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="train only this many batches per epoch and scale the time to a full epoch "
                             "(default 0: full epochs; quick 8)")
    parser.add_argument("--nmf-max-iter", type=int, default=None, help="NMF iterations (default 50; quick 20)")
    parser.add_argument("--lsnmf-max-iter", type=int, default=None, help="LSNMF iterations (default 10; quick 5)")
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--density", type=float, default=0.02, help="target fraction of non-zeros (default 0.02)")
    parser.add_argument("--n-types", type=int, default=6, help="simulated cell types (default 6)")
    parser.add_argument("--n-init", type=int, default=10, help="K-means restarts (default 10)")
    parser.add_argument("--umap", action="store_true", help="also time scatac.tl.umap")
    parser.add_argument("--export", action="store_true",
                        help="also run scatac.export (feature.txt, clusters, scores, result.h5ad, figures; UMAP with --umap): "
                             "the whole path a method script takes")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size of the neural methods (default: each script's)")
    parser.add_argument("--decoders", default="full,sampled",
                        help="the autoencoders' decoders to time side by side, each a row (default full,sampled)")
    parser.add_argument("--negatives", default=params.NEGATIVES.default,
                        help=f"peaks drawn per batch by the sampled decoder (default {params.NEGATIVES.default})")
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler over each neural method's training (use with --max-batches); the top "
                             "operators by self CPU time go to stderr and, with --out, to OUT.profile.txt")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each child (default torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per method run before giving up")
    parser.add_argument("--tmpdir", default=None, help="where the simulated .h5ad files go (default a new temp folder)")
    parser.add_argument("--out", default=None, help="also write the table here (tab-separated)")
    parser.add_argument("--streamed", action="store_true",
                        help="simulate each size as an on-disk store, block by block (scatac.simulate.simulate_store), "
                             "and train from it streamed (a backed AnnData: scatac.streamed), never loading the matrix")
    parser.add_argument("--store-dir", default=None,
                        help="with --streamed: keep the simulated stores here and reuse them on the next run")
    parser.add_argument("--processes", type=int, default=1,
                        help="train each neural method under torchrun with this many CPU processes (gloo, loopback)")
    args = parser.parse_args(argv)

    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    try:
        methods_run = methods.parse_names(args.methods, ALL_METHODS, where="--methods")
        decoders = methods.parse_names(args.decoders, params.DECODER.choices, where="--decoders")
        params.NEGATIVES.check(args.negatives, "--negatives")
    except InputError as exc:
        raise SystemExit(f"scale.py: {exc}")
    epochs = args.epochs if args.epochs is not None else 1  # real data sets: the methods' own epochs, unless given
    max_batches = args.max_batches if args.max_batches is not None else (8 if args.quick else 0)
    nmf_iter = args.nmf_max_iter if args.nmf_max_iter is not None else (20 if args.quick else 50)
    lsnmf_iter = args.lsnmf_max_iter if args.lsnmf_max_iter is not None else (5 if args.quick else 10)

    rows = []
    with tempfile.TemporaryDirectory(prefix="scale_", dir=args.tmpdir) as tmp:
        for size in sizes:
            real = isinstance(size, Path)
            if real:
                path, meta = shared_matrix(size)
                n_cells, n_peaks = meta["shape"]
            elif args.streamed:
                n_cells, n_peaks = size
                print(f"scale: simulating a store of {n_cells} x {n_peaks} ...", file=sys.stderr, flush=True)
                path, meta = simulate_store_once(n_cells, n_peaks, args.density, args.n_types,
                                                 Path(args.store_dir or tmp))
            else:
                n_cells, n_peaks = size
                print(f"scale: simulating {n_cells} x {n_peaks} ...", file=sys.stderr, flush=True)
                path, meta = simulate_to_h5ad(n_cells, n_peaks, args.density, args.n_types, Path(tmp))
            print(f"scale: {meta['nnz']} non-zeros ({meta['density']:.2%}), CSR {meta['csr_mb']:.1f} MiB, "
                  f"simulated in {meta['simulate_s']:.1f} s", file=sys.stderr, flush=True)
            for method, decoder in [(m, d) for m in methods_run for d in (decoders if m in NEURAL else ["-"])]:
                spec = {"path": str(path), "method": method, "decoder": decoder, "negatives": args.negatives,
                        "epochs": args.epochs if real else epochs, "max_batches": 0 if real else max_batches,
                        "nmf_max_iter": nmf_iter, "lsnmf_max_iter": lsnmf_iter, "latent_dim": args.latent_dim,
                        "n_init": args.n_init, "umap": args.umap, "export": args.export, "batch_size": args.batch_size,
                        "profile": args.profile, "threads": args.threads, "device": args.device,
                        "streamed": args.streamed and not real, "nnz": meta["nnz"]}
                print(f"scale: {method} ({decoder} decoder) on {n_cells} x {n_peaks} ...", file=sys.stderr, flush=True)
                result = run_child(spec, args.timeout, args.processes if method in NEURAL else 1)
                row = {"data": path.name if real else "store" if args.streamed else "simulated",
                       "n_cells": n_cells, "n_peaks": n_peaks, "processes": args.processes if method in NEURAL else 1,
                       "threads": args.threads or "",
                       "method": method, "decoder": decoder,
                       "batch_size": args.batch_size or "auto", "nnz": meta["nnz"],
                       "csr_mb": meta["csr_mb"], **result}
                if "peak_rss_mb" in row:
                    row["mem_ratio"] = row["peak_rss_mb"] / meta["csr_mb"]
                    row["within_budget"] = row["peak_rss_mb"] <= 3 * meta["csr_mb"] + 1024
                profile = row.pop("profile", None)
                if profile:
                    text = f"== {method} on {n_cells} x {n_peaks}\n" + "\n".join(profile)
                    print(text, file=sys.stderr, flush=True)
                    if args.out:
                        with open(str(args.out) + ".profile.txt", "a") as handle:
                            handle.write(text + "\n")
                rows.append(row)
                print(render([row]).splitlines()[1], file=sys.stderr, flush=True)
                if args.out:
                    write_tsv(args.out, rows)  # partial table survives an interrupted run
            if not real and not args.store_dir:
                os.unlink(path)
    print(render(rows))
    if args.out:
        write_tsv(args.out, rows)
        print(f"scale: table written to {args.out}", file=sys.stderr)
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
