"""bench/scale.py: time and memory of each method as the matrix grows (issue 7, "Scale and speed").

    python bench/scale.py [--sizes 10000x100000,50000x100000,100000x100000] [--methods AE,NMF,...]
                          [--epochs 1] [--max-batches 0] [--umap] [--export] [--batch-size N]
                          [--out scale.tsv] [--quick]

For each size the project's simulator (scatac.simulate: binary-ish counts, about 2% non-zero,
several cell types) makes one CSR matrix, written once to an .h5ad in a temporary folder. Each
method then runs in its own child process (so one method's memory does not pollute the next)
through the functions a script runs: scatac.read -> scatac.pp.filter -> scatac.tl.<method> ->
scatac.tl.cluster (K-means + scores), and optionally scatac.tl.umap and scatac.export. A
train.Trainer carries the limit on batches, keeps the timing of each training call, and with
--profile runs each call under torch.profiler. Columns:

  load_s        scatac.read on the .h5ad
  epoch_s       seconds per training epoch (neural: train() wall time / epochs; with --max-batches N
                only N batches per epoch are run, batches 2..N timed (the first pays one-off costs)
                and scaled to a full epoch, marked "~" in epoch_note; NMF/LSNMF: seconds per iteration)
  total_s       load + filter + fit (incl. transform, encode) + K-means + scores (+ UMAP with --umap)
  peak_rss_mb   ru_maxrss of the child process (its whole life: imports, load, fit, scores)
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
  mm_efficiency achieved_gflops / mm_gflops
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import compare  # noqa: E402  (light: no torch)
from scatac import files, methods  # noqa: E402
from scatac.errors import InputError  # noqa: E402

ALL_METHODS = tuple(methods.ALL) + ("LSI",)
DEFAULT_SIZES = "10000x100000,50000x100000,100000x100000"
QUICK_SIZES = "2000x5000,4000x5000"
COLUMNS = ["n_cells", "n_peaks", "method", "cells_kept", "peaks_kept", "nnz", "csr_mb", "load_s", "filter_s", "fit_s",
           "epochs", "epoch_s", "epoch_note", "eval_s", "umap_s", "export_s", "total_s", "base_rss_mb", "peak_rss_mb", "mem_ratio",
           "within_budget", "mm_gflops", "achieved_gflops", "mm_efficiency", "ARI", "status"]


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def maxrss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes)
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 2**20 if sys.platform == "darwin" else value / 1024


# --------------------------------------------------------------------------
# Child: one method on one matrix
# --------------------------------------------------------------------------
def linear_flops_per_cell(model, nnz_per_cell: float) -> tuple[float, float, list]:
    """Training FLOPs per cell of the model's layers: (dense nn.Linear FLOPs, sparse PeakLinear FLOPs,
    the dense layers' (in, out) shapes).

    Dense layer, per cell: forward 2*in*out, grad-weight 2*in*out, grad-input 2*in*out.
    PeakLinear (the first layer, reading the sparse input): forward and grad-weight 2*nnz*out
    each, no grad-input (its input is data).
    """
    import torch.nn as nn

    try:
        from scatac.nn import PeakLinear
    except ImportError:  # a checkout from before the package (or the sparse first layer), for a before/after table
        try:
            from AE import PeakLinear
        except ImportError:
            PeakLinear = ()

    dense, sparse, shapes = 0.0, 0.0, []
    for module in model.modules():
        if isinstance(module, PeakLinear):
            sparse += 4 * nnz_per_cell * module.out_features
        elif isinstance(module, nn.Linear):
            shapes.append((module.in_features, module.out_features))
            dense += 6 * module.in_features * module.out_features
    return dense, sparse, shapes


def mm_reference_gflops(shapes, batch_size: int, repeats: int = 3) -> float:
    """GFLOP/s of plain torch.mm doing one training step's products of `shapes` at `batch_size`."""
    import torch

    gen = torch.Generator().manual_seed(0)
    flops, elapsed = 0.0, float("inf")
    tensors = [(torch.rand(batch_size, n_in, generator=gen), torch.rand(n_in, n_out, generator=gen),
                torch.rand(batch_size, n_out, generator=gen)) for n_in, n_out in shapes]
    for _ in range(repeats):
        started = time.perf_counter()
        step_flops = 0.0
        for x, w, g in tensors:
            torch.mm(x, w)  # forward
            torch.mm(x.t(), g)  # grad weight
            torch.mm(g, w.t())  # grad input
            step_flops += 6 * x.shape[0] * x.shape[1] * w.shape[1]
        elapsed = min(elapsed, time.perf_counter() - started)
        flops = step_flops
    return flops / elapsed / 1e9


def profiling_trainer(**fields):
    """A Trainer that runs each train() call under torch.profiler and keeps the top operators' table."""
    import torch.profiler

    from scatac.train import Trainer

    class ProfilingTrainer(Trainer):
        def __post_init__(self):
            super().__post_init__()
            self.tables = []

        def train(self, model, data, *args, **kwargs):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
                history = super().train(model, data, *args, **kwargs)
            self.tables.append(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
            return history

    return ProfilingTrainer(**fields)


def epoch_seconds(calls: list, max_batches: int) -> tuple[float, bool]:
    """Seconds of one full epoch of each train() call (StackedAE: each stage), summed, and whether any was
    extrapolated from the first `max_batches` batches (from batches 2..N: the first pays one-off costs)."""
    per_epoch, limited_any = 0.0, False
    for call in calls:
        n_full = call["batches_per_epoch"]
        run = min(max_batches, n_full) if max_batches else n_full
        limited_any |= run < n_full
        if limited_any and call["steady_batches"] > 0:
            per_epoch += call["steady_seconds"] / call["steady_batches"] * n_full
        else:
            per_epoch += call["seconds"] / call["epochs"] * n_full / run
    return per_epoch, limited_any


def child(spec: dict) -> dict:
    base_rss = rss_mb()
    import scatac
    from scatac import export, runtime
    from scatac.train import Trainer

    runtime.set_threads(spec.get("threads"))
    out = {"status": "ok", "base_rss_mb": max(base_rss, rss_mb())}
    method = spec["method"]
    max_batches = spec.get("max_batches") or 0
    fields = dict(device=runtime.select_device(spec.get("device", "cpu")), progress=False, max_batches=max_batches or None)
    trainer = profiling_trainer(**fields) if spec.get("profile") else Trainer(**fields)

    t0 = time.perf_counter()
    adata = scatac.read(spec["path"], label_key="label")
    out["load_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    scatac.pp.filter(adata)
    out["filter_s"] = time.perf_counter() - t1
    out["cells_kept"], out["peaks_kept"] = adata.n_obs, adata.n_vars

    options = {}
    if method in methods.ALL and methods.ALL[method].kind == "neural":
        card = methods.ALL[method]
        options = {name: spec["epochs"] for name in card.epochs}
        options.update({"batch_size": spec["batch_size"]} if spec.get("batch_size") else {})
        options["trainer"] = trainer
    elif method in ("NMF", "LSNMF"):
        options = {"max_iter": spec["nmf_max_iter" if method == "NMF" else "lsnmf_max_iter"]}
    t2 = time.perf_counter()
    model = compare.FIT[method](adata, spec["latent_dim"], seed=0, **options)
    out["fit_s"] = time.perf_counter() - t2

    if trainer.calls:
        out["epochs"] = sum(call["epochs"] for call in trainer.calls)
        out["epoch_s"], limited = epoch_seconds(trainer.calls, max_batches)
        out["epoch_note"] = (f"~{max_batches}b" if limited else "full") + ("(sum of stages)" if method == "StackedAE" else "")
        if method == "AE":
            call = trainer.calls[0]
            dense_flops, sparse_flops, shapes = linear_flops_per_cell(model, adata.X.nnz / max(adata.n_obs, 1))
            achieved = (dense_flops + sparse_flops) * call["n_cells"] / out["epoch_s"] / 1e9  # AE has one train() call
            reference = mm_reference_gflops(shapes, call["batch_size"])
            out["achieved_gflops"], out["mm_gflops"] = achieved, reference
            out["mm_efficiency"] = achieved / reference
    elif method in ("NMF", "LSNMF"):
        details = adata.uns[method]["factorization"]
        n_iter = max(int(details.get("n_iter", 0) or 0), 1)
        out["epochs"] = n_iter
        out["epoch_s"] = details.get("fit_s", out["fit_s"]) / n_iter
        out["epoch_note"] = "per iteration"
    if spec.get("profile"):
        out["profile"] = [f"{method}, train() phase {i + 1}:\n{table}" for i, table in enumerate(trainer.tables)]

    t3 = time.perf_counter()
    scores = scatac.tl.cluster(adata, use_rep=f"X_{method}", labels_key="label", n_init=spec["n_init"])
    out["eval_s"] = time.perf_counter() - t3
    out["ARI"] = scores.get("ARI", float("nan"))
    if spec.get("umap"):
        t4 = time.perf_counter()
        scatac.tl.umap(adata, use_rep=f"X_{method}")
        out["umap_s"] = time.perf_counter() - t4
    if spec.get("export"):
        t5 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"scale_export_{method}_") as outdir:
            export.write_results(outdir, adata, method, labels_key="label", settings={"bench": "scale"})
            export.write_figures(outdir, adata, method, labels_key="label")
        out["export_s"] = time.perf_counter() - t5
    del model, adata
    out["total_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = maxrss_mb()
    return out


# --------------------------------------------------------------------------
# Parent: simulate, write, run each method in a child
# --------------------------------------------------------------------------
def parse_sizes(text: str) -> list:
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        cells, _, peaks = item.partition("x")
        try:
            sizes.append((int(cells), int(peaks)))
        except ValueError:
            raise SystemExit(f"scale.py: bad size {item!r}; expected CELLSxPEAKS, e.g. 10000x100000")
    return sizes


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


def run_child(spec: dict, timeout: float | None):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
        spec_path = handle.name
    result_path = spec_path + ".out"
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec_path, result_path],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(result_path):
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            return {"status": f"failed: {tail[0][:160]}"}
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
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        spec = json.loads(Path(argv[1]).read_text())
        result = child(spec)
        Path(argv[2]).write_text(json.dumps(result))
        return 0
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
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler over each neural method's training (use with --max-batches); the top "
                             "operators by self CPU time go to stderr and, with --out, to OUT.profile.txt")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each child (default torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per method run before giving up")
    parser.add_argument("--tmpdir", default=None, help="where the simulated .h5ad files go (default a new temp folder)")
    parser.add_argument("--out", default=None, help="also write the table here (tab-separated)")
    args = parser.parse_args(argv)

    sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    try:
        methods_run = methods.parse_names(args.methods, ALL_METHODS, where="--methods")
    except InputError as exc:
        raise SystemExit(f"scale.py: {exc}")
    epochs = args.epochs if args.epochs is not None else 1
    max_batches = args.max_batches if args.max_batches is not None else (8 if args.quick else 0)
    nmf_iter = args.nmf_max_iter if args.nmf_max_iter is not None else (20 if args.quick else 50)
    lsnmf_iter = args.lsnmf_max_iter if args.lsnmf_max_iter is not None else (5 if args.quick else 10)

    rows = []
    with tempfile.TemporaryDirectory(prefix="scale_", dir=args.tmpdir) as tmp:
        for n_cells, n_peaks in sizes:
            print(f"scale: simulating {n_cells} x {n_peaks} ...", file=sys.stderr, flush=True)
            path, meta = simulate_to_h5ad(n_cells, n_peaks, args.density, args.n_types, Path(tmp))
            print(f"scale: {meta['nnz']} non-zeros ({meta['density']:.2%}), CSR {meta['csr_mb']:.1f} MiB, "
                  f"simulated in {meta['simulate_s']:.1f} s", file=sys.stderr, flush=True)
            for method in methods_run:
                spec = {"path": str(path), "method": method, "epochs": epochs, "max_batches": max_batches,
                        "nmf_max_iter": nmf_iter, "lsnmf_max_iter": lsnmf_iter, "latent_dim": args.latent_dim,
                        "n_init": args.n_init, "umap": args.umap, "export": args.export, "batch_size": args.batch_size,
                        "profile": args.profile, "threads": args.threads, "device": args.device}
                print(f"scale: {method} on {n_cells} x {n_peaks} ...", file=sys.stderr, flush=True)
                result = run_child(spec, args.timeout)
                row = {"n_cells": n_cells, "n_peaks": n_peaks, "method": method, "nnz": meta["nnz"],
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
            os.unlink(path)
    print(render(rows))
    if args.out:
        write_tsv(args.out, rows)
        print(f"scale: table written to {args.out}", file=sys.stderr)
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
