"""compare.py: the fair comparison of the suite's methods on one data set, in one command.

    python compare.py <data> <outdir> <latent_dim> [labels] --seeds 3

The data are loaded and filtered once; every method then sees the same matrix, the
same latent size, the same K-means (same k, same n_init) and the same seeds. Each
method is fitted by its own script's code, in process (AE.fit, VAE.fit, ...,
common.fit_nmf / common.fit_lsnmf), with LSI (TF-IDF + truncated SVD) as the
reference and SnapATAC2's spectral embedding when snapatac2 is importable.
"""
from __future__ import annotations

import importlib
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import common

NEURAL = ("AE", "SparseAE", "StackedAE", "VAE")
FACTORIZATIONS = ("NMF", "LSNMF")
METHODS = NEURAL + FACTORIZATIONS
REFERENCES = ("LSI", "SnapATAC2")
# Epochs chosen by measurement on ../shared/data (see README); StackedAE: pretrain, finetune.
DEFAULT_EPOCHS = {"AE": 60, "SparseAE": 20, "StackedAE": (5, 20), "VAE": 30}
DEFAULT_MAX_ITER = {"NMF": 400, "LSNMF": 50}
SCORE_KEYS = ("ARI", "NMI", "F1", "silhouette")


@dataclass
class RunResult:
    """One method at one seed: its features, clusters and scores, or why it failed."""

    method: str
    seed: int
    status: str = "ok"
    latent: np.ndarray | None = None
    clusters: np.ndarray | None = None
    confusion: object = None
    scores: dict = field(default_factory=dict)
    train_s: float = float("nan")
    peak_mb: float = float("nan")
    fit: common.FitResult | None = None


# --------------------------------------------------------------------------
# Fitting each method through its own code
# --------------------------------------------------------------------------
def neural_args(method: str, latent_dim: int, seed: int, options: dict, device_name: str):
    """The method script's own argparse defaults, with the comparison's shared settings filled in."""
    module = importlib.import_module(method)
    epochs = options.get("epochs", {}).get(method, DEFAULT_EPOCHS[method])
    epochs = list(epochs) if isinstance(epochs, (tuple, list)) else [epochs]
    argv = [*map(str, epochs), "<data>", "<outdir>", str(latent_dim), "--seed", str(seed), "--device", device_name]
    argv += ["--transform", options["transform"]] if options.get("transform") else []
    argv += options.get("extra", {}).get(method, [])
    args = module.build_parser().parse_args(argv)
    if hasattr(module, "validate"):
        module.validate(args)
    return module, args


def fit_method(method: str, dataset: common.Dataset, latent_dim: int, seed: int, device, options: dict) -> common.FitResult:
    """Features (n_cells, latent_dim) of `dataset` by `method` at `seed`."""
    if method in NEURAL:
        module, args = neural_args(method, latent_dim, seed, options, device.type)
        args.n_label_types = len(set(dataset.labels)) if dataset.labels is not None else None
        common.set_seed(seed)
        data = common.TrainData.from_counts(dataset.X, args.transform)
        return module.fit(data, args, device)
    if method in FACTORIZATIONS:
        fit = common.fit_nmf if method == "NMF" else common.fit_lsnmf
        max_iter = options.get("max_iter", {}).get(method, DEFAULT_MAX_ITER[method])
        cell_factors, loadings, details = fit(dataset.X, rank=latent_dim, seed=seed, max_iter=max_iter)
        return common.FitResult(latent=cell_factors, extra_uns={"factorization": details}, model=None,
                                model_config={"loadings": loadings})
    if method == "LSI":
        return common.FitResult(latent=common.lsi(dataset.X, latent_dim, seed=seed))
    if method == "SnapATAC2":
        return common.FitResult(latent=snapatac2_spectral(dataset, latent_dim, seed))
    raise ValueError(f"unknown method {method!r}")


def snapatac2_available() -> bool:
    try:
        import snapatac2  # noqa: F401
    except ImportError:
        return False
    return True


def snapatac2_spectral(dataset: common.Dataset, latent_dim: int, seed: int) -> np.ndarray:
    """SnapATAC2's spectral embedding (cosine similarity, all filtered peaks as features)."""
    import anndata
    import snapatac2 as snap

    adata = anndata.AnnData(X=common.binarize(dataset.X))
    adata.var["selected"] = True
    snap.tl.spectral(adata, n_comps=latent_dim, features="selected", random_state=seed)
    return np.asarray(adata.obsm["X_spectral"], dtype=np.float32)


def run_one(method, dataset, latent_dim, seed, device, options, n_clusters, n_init) -> RunResult:
    """Fit, cluster and score one method at one seed; a failure becomes a row, not a crash."""
    result = RunResult(method=method, seed=seed)
    started = time.perf_counter()
    try:
        with common.PeakMemory() as memory:
            fit = fit_method(method, dataset, latent_dim, seed, device, options)
        result.train_s = time.perf_counter() - started
        result.peak_mb = memory.peak_mb
        latent = np.asarray(fit.latent, dtype=np.float32)
        if latent.shape != (dataset.n_cells, latent_dim) or not np.all(np.isfinite(latent)):
            raise common.TrainingFailed(f"features of shape {latent.shape} with non-finite values" if latent.ndim == 2
                                        else f"features of shape {latent.shape}")
        result.fit, result.latent = fit, latent
        result.clusters, result.scores, result.confusion = common.evaluate(latent, dataset.labels, n_clusters, seed, n_init=n_init)
    except (common.InputError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a failing method is reported, the comparison goes on
        reason = f"{exc.__class__.__name__}: {exc}".replace("\t", " ").replace("\n", " ")
        result.status = f"failed: {reason[:200]}"
        result.train_s = time.perf_counter() - started
        common.warn(f"{method} (seed {seed}) failed: {reason}")
        if options.get("debug"):
            traceback.print_exc()
    return result


def run_comparison(dataset: common.Dataset, methods, latent_dim: int, seeds, device, options=None,
                   n_clusters=None, n_init: int = 10, progress: bool = True) -> list:
    """Every method at every seed on the same filtered `dataset`; returns RunResults in order."""
    from tqdm.auto import tqdm

    options = options or {}
    if n_clusters is None:
        n_clusters = len(set(dataset.labels)) if dataset.labels is not None else 8
    jobs = [(m, s) for m in methods for s in seeds]
    results = []
    common.NESTED_PROGRESS = True
    try:
        bar = tqdm(jobs, desc="compare", unit="run", disable=not progress, file=sys.stderr)
        for method, seed in bar:
            bar.set_postfix(method=method, seed=seed)
            results.append(run_one(method, dataset, latent_dim, seed, device, options, n_clusters, n_init))
    finally:
        common.NESTED_PROGRESS = False
    return results


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------
def summarize(results: list, methods) -> list:
    """One row per method: mean and standard deviation over seeds of each score, seconds, peak MiB."""
    rows = []
    for method in methods:
        runs = [r for r in results if r.method == method]
        ok = [r for r in runs if r.status == "ok"]
        row = {"method": method, "n_seeds": len(ok), "status": "ok" if len(ok) == len(runs) else next(r.status for r in runs if r.status != "ok")}
        keys = [k for k in SCORE_KEYS if any(k in r.scores for r in ok)] or list(SCORE_KEYS)
        for key in SCORE_KEYS:
            values = [r.scores[key] for r in ok if key in r.scores and not math.isnan(r.scores[key])]
            row[f"{key}_mean"] = float(np.mean(values)) if values and key in keys else float("nan")
            row[f"{key}_std"] = float(np.std(values)) if values and key in keys else float("nan")
        row["train_s"] = float(np.mean([r.train_s for r in ok])) if ok else float("nan")
        row["peak_mb"] = float(np.max([r.peak_mb for r in ok])) if ok else float("nan")
        rows.append(row)
    return rows


TABLE_COLUMNS = ["method", *[f"{k}_{s}" for k in SCORE_KEYS for s in ("mean", "std")], "train_s", "peak_mb", "n_seeds", "status"]


def format_cell(value):
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def render_table(rows, columns=TABLE_COLUMNS) -> str:
    """A plain aligned text table for the terminal."""
    cells = [[format_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def pairwise_agreement(results: list, methods) -> list:
    """ARI between the first-seed clusterings of every pair of methods (label-free agreement)."""
    from sklearn.metrics import adjusted_rand_score

    first = {m: next((r for r in results if r.method == m and r.status == "ok"), None) for m in methods}
    rows = []
    for a in methods:
        row = {"method": a}
        for b in methods:
            ra, rb = first[a], first[b]
            row[b] = float(adjusted_rand_score(ra.clusters, rb.clusters)) if ra is not None and rb is not None else float("nan")
        rows.append(row)
    return rows


def plot_comparison(path, rows, labelled: bool, title: str):
    plt = common._pyplot()
    metrics = ["ARI", "NMI", "F1", "silhouette"] if labelled else ["silhouette"]
    methods = [r["method"] for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(methods) * len(metrics) / 2.5, 4))
    width = 0.8 / len(metrics)
    x = np.arange(len(methods))
    for i, metric in enumerate(metrics):
        means = [r[f"{metric}_mean"] for r in rows]
        stds = [0 if math.isnan(r[f"{metric}_std"]) else r[f"{metric}_std"] for r in rows]
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, np.nan_to_num(means), width, yerr=stds, capsize=2, label=metric)
    for j, r in enumerate(rows):
        if r["status"] != "ok" and r["n_seeds"] == 0:
            ax.text(j, 0.02, "failed", ha="center", va="bottom", rotation=90, fontsize=8, color="red")
    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_ylabel("score (mean ± sd over seeds)")
    ax.set_ylim(min(0, *(np.nan_to_num([r["silhouette_mean"] for r in rows]))) - 0.05, 1.05)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8, ncol=len(metrics), loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    ax.set_title(title, fontsize=10)
    common.save_figure(fig, path)


def plot_umap_grid(path, panels: list, labels):
    """One UMAP panel per method; the same label has the same colour in every panel."""
    plt = common._pyplot()
    n = len(panels)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + (1.8 if labels is not None else 0), 3.4 * nrows), squeeze=False)
    colors = common.category_colors(labels) if labels is not None else None
    for ax, (method, coords, groups) in zip(axes.ravel(), panels):
        common.plot_embedding(ax, coords, groups, method, colors=colors or common.category_colors(groups), legend=labels is None)
        ax.set_xlabel("")
        ax.set_ylabel("")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if labels is not None:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[name], label=name) for name in colors]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    common.save_figure(fig, path)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def build_parser():
    parser = common.ArgumentParser(
        prog="compare.py",
        description="Run the suite's methods (and LSI, SnapATAC2 when installed) on the same data with the same "
                    "settings; write comparison.tsv, comparison.png, umap_grid.png and each method's outputs.",
    )
    parser.add_argument("data", help="10x/SCALE folder, Cell Ranger .h5, .h5ad, .mtx[.gz] or peaks x cells table")
    parser.add_argument("outdir", help="output folder (created if missing)")
    parser.add_argument("latent_dim", type=common.positive_int, help="latent size shared by every method")
    parser.add_argument("labels", nargs="?", default=None, help="optional labels file (barcode<TAB>label, or one per line)")
    group = parser.add_argument_group("comparison")
    group.add_argument("--methods", default=",".join(METHODS),
                       help=f"comma-separated subset of {','.join(METHODS)} (default: all); LSI is always added")
    group.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    group.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed+N-1 (default 0)")
    group.add_argument("--n-init", type=int, default=10, help="K-means restarts, the same for every method (default 10)")
    group.add_argument("--no-snapatac2", action="store_true", help="skip SnapATAC2 even when it is installed")
    group.add_argument("--debug", action="store_true", help="print the traceback of a method that fails")
    group = parser.add_argument_group("epochs per method (defaults chosen by measurement; see README)")
    group.add_argument("--ae-epochs", type=int, default=DEFAULT_EPOCHS["AE"], help=f"AE epochs (default {DEFAULT_EPOCHS['AE']})")
    group.add_argument("--sparseae-epochs", type=int, default=DEFAULT_EPOCHS["SparseAE"], help=f"SparseAE epochs (default {DEFAULT_EPOCHS['SparseAE']})")
    group.add_argument("--stackedae-epochs", type=int, nargs=2, metavar=("PRETRAIN", "FINETUNE"), default=list(DEFAULT_EPOCHS["StackedAE"]),
                       help="StackedAE pretraining epochs per layer and fine-tuning epochs (default %d %d)" % DEFAULT_EPOCHS["StackedAE"])
    group.add_argument("--vae-epochs", type=int, default=DEFAULT_EPOCHS["VAE"], help=f"VAE epochs (default {DEFAULT_EPOCHS['VAE']})")
    group.add_argument("--nmf-max-iter", type=int, default=DEFAULT_MAX_ITER["NMF"], help=f"NMF iterations (default {DEFAULT_MAX_ITER['NMF']})")
    group.add_argument("--lsnmf-max-iter", type=int, default=DEFAULT_MAX_ITER["LSNMF"], help=f"LSNMF iterations (default {DEFAULT_MAX_ITER['LSNMF']})")
    common.add_data_arguments(parser)
    return parser


def parse_methods(text: str) -> list:
    wanted = [m.strip() for m in text.split(",") if m.strip()]
    by_lower = {m.lower(): m for m in METHODS}
    unknown = [m for m in wanted if m.lower() not in by_lower]
    if unknown or not wanted:
        common.fail("--methods", f"unknown method {unknown[0]!r}; allowed: {', '.join(METHODS)}" if unknown else "no method given")
    return list(dict.fromkeys(by_lower[m.lower()] for m in wanted))


def options_from_args(args) -> dict:
    for name in ("ae_epochs", "sparseae_epochs", "vae_epochs", "nmf_max_iter", "lsnmf_max_iter"):
        if getattr(args, name) < 1:
            common.fail("--" + name.replace("_", "-"), f"must be at least 1, got {getattr(args, name)}")
    if min(args.stackedae_epochs) < 1:
        common.fail("--stackedae-epochs", f"must be at least 1, got {args.stackedae_epochs}")
    return {
        "epochs": {"AE": args.ae_epochs, "SparseAE": args.sparseae_epochs, "StackedAE": tuple(args.stackedae_epochs), "VAE": args.vae_epochs},
        "max_iter": {"NMF": args.nmf_max_iter, "LSNMF": args.lsnmf_max_iter},
        "transform": args.transform,
        "debug": args.debug,
    }


def main(argv=None):
    args = build_parser().parse_args(argv)
    common.validate_common(args)
    methods = parse_methods(args.methods)
    options = options_from_args(args)
    if args.seeds < 1:
        common.fail("--seeds", f"must be at least 1, got {args.seeds}")
    if args.n_init < 1:
        common.fail("--n-init", f"must be at least 1, got {args.n_init}")
    device = common.select_device(args.device)
    dataset = common.prepare_dataset(args.data, args.labels, args)
    common.check_latent_dim(args.latent_dim, dataset.n_peaks, args.data)
    outdir, created = common.prepare_outdir(args.outdir)
    all_methods = methods + ["LSI"]
    if not args.no_snapatac2:
        if snapatac2_available():
            all_methods.append("SnapATAC2")
        else:
            common.info("note: snapatac2 is not installed; its spectral reference is skipped (pip install snapatac2)")
    common.configure_torch(args)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    with common.output_guard(outdir, created):
        results = run_comparison(dataset, all_methods, args.latent_dim, seeds, device, options, args.n_clusters, args.n_init)
        write_outputs(outdir, dataset, results, all_methods, args, device)
    return results


def write_outputs(outdir: Path, dataset, results, methods, args, device):
    """Each method's usual files (first seed) in its subfolder, then the table and the two figures."""
    labelled = dataset.labels is not None
    settings = {**common.settings_from_args(args), "device": str(device)}
    panels = []
    for method in methods:
        first = next((r for r in results if r.method == method and r.status == "ok"), None)
        if first is None:
            continue
        folder = outdir / method
        folder.mkdir(exist_ok=True)
        timings = {"train_s": first.train_s}
        per_seed = [r for r in results if r.method == method]
        common.write_table(folder / "scores_by_seed.tsv", ["seed", "status", *SCORE_KEYS, "train_s", "peak_mb"],
                           [[r.seed, r.status, *[common.format_float(r.scores.get(k, float("nan"))) for k in SCORE_KEYS],
                             common.format_float(r.train_s), common.format_float(r.peak_mb)] for r in per_seed])
        fit = first.fit
        if fit.model is not None:
            common.save_model(folder / "model.pt", fit.model, fit.model_config)
        elif "loadings" in fit.model_config:
            common.write_loadings(folder / "loadings.tsv", fit.model_config["loadings"], dataset.peaks, method)
        common.export_results(folder, method, dataset, first.latent, first.seed, args.n_clusters, {**settings, "method": method},
                              timings, history=fit.history, extra_uns=fit.extra_uns, n_init=args.n_init, quiet=True,
                              evaluation=(first.clusters, first.scores, first.confusion), umap=not args.no_umap)
        if not args.no_umap:
            coords = np.loadtxt(folder / "umap.txt", skiprows=1, usecols=(1, 2), delimiter="\t", ndmin=2)
            groups = dataset.labels if labelled else [f"cluster {c}" for c in first.clusters]
            panels.append((method, coords, groups))

    rows = summarize(results, methods)
    common.write_table(outdir / "comparison.tsv", TABLE_COLUMNS, [[format_cell(r[c]) for c in TABLE_COLUMNS] for r in rows])
    title = f"{Path(str(args.data)).name}: {len(rows)} methods, latent {args.latent_dim}, seeds {args.seeds}"
    plot_comparison(outdir / "comparison.png", rows, labelled, title)
    if not labelled:
        agreement = pairwise_agreement(results, methods)
        common.write_table(outdir / "agreement.tsv", ["method", *methods],
                           [[r["method"], *[common.format_float(r[m]) for m in methods]] for r in agreement])
    if panels:
        plot_umap_grid(outdir / "umap_grid.png", panels, dataset.labels if labelled else None)
    print(render_table(rows))
    print(f"comparison: results in {outdir}")


if __name__ == "__main__":
    common.run_cli(main)
