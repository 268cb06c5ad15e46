"""compare.py: the fair comparison of the suite's methods on one data set, in one command.

    python compare.py <data> <outdir> <latent_dim> [labels] --seeds 3

The data are loaded and filtered once; every method then sees the same counts, the same latent
size, the same K-means (same k, same restarts), the same Leiden (resolution bisected to the same
number of clusters) and the same seeds, through the same functions a script or a notebook calls
(scatac.tl.ae, ..., scatac.tl.nmf, scatac.tl.lsnmf), with references each at the latent size and at
its tool's defaults: LSI (TF-IDF + truncated SVD) and, when snapatac2 is importable, SnapATAC2's
spectral embedding.
Every run's features, clusters and scores stay in memory; the tables and figures are drawn from
them, and each method's first seed is written as that method's usual results folder.

With --store PATH the filtered data are written once into an on-disk store (or a store of the same input and
filter is reused, as the method scripts do) and every method reads it streamed: those that need the whole matrix
in memory (NEEDS_MEMORY) get a row saying they were skipped.
"""
from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from scatac import cli, export, files, io, methods, params
from scatac.errors import TrainingFailed, info, warn
from scatac.tl import ae, lsi, lsnmf, nmf, sparse_ae, spectral, stacked_ae, vae

FIT = {"AE": ae, "SparseAE": sparse_ae, "StackedAE": stacked_ae, "VAE": vae, "NMF": nmf, "LSNMF": lsnmf,
       "LSI": lsi, "LSI_Signac": lsi, "LSI_US": partial(lsi, unit_variance=False),
       "LSI_idf": partial(lsi, transform="idf", unit_variance=False),
       "SnapATAC2": spectral, "SnapATAC2_defaults": spectral}
# The references, each at the comparison's latent size and at its own tool's defaults, so that no method is ahead
# only because a reference ran in a weak setting: Signac's RunSVD takes 50 components and its FindNeighbors and
# RunUMAP use dimensions 2-30 (29 after the depth component), SnapATAC2's tl.spectral takes n_comps=30. LSI_idf is
# LSI on the input NMF and LSNMF take by default (pp.idf), so neither is ahead for its input alone, with the
# components weighted by their singular values: the strongest LSI variant on both bone-marrow sets. LSI_US is
# Signac's input with those weights: the strongest on the cerebellum set, where unit variance lost most
# (docs/benchmarks.md, "Which LSI variant scored what").
OWN_SIZE = {"LSI_Signac": 29, "SnapATAC2_defaults": 30}
LSI_REFERENCES = ("LSI", "LSI_Signac", "LSI_US", "LSI_idf")
SNAPATAC2_REFERENCES = ("SnapATAC2", "SnapATAC2_defaults")
METHODS = tuple(methods.ALL)
NEURAL = tuple(m.name for m in methods.NEURAL)
# K-means (same k, same restarts) and Leiden (resolution bisected to the same number of clusters) for every method
# and spectral clustering on Leiden's graph (same k); knn_purity, how often a cell's 14 nearest neighbours share its
# label, is the same for every clustering: a low ARI beside a high purity is the clustering's, not the features'
SCORE_KEYS = ("ARI", "NMI", "F1", "silhouette", "ARI_leiden", "NMI_leiden", "ARI_spectral", "knn_purity")
OUTPUT_FILES = ("comparison.tsv", "comparison.png", "umap_grid.png", "agreement.tsv")
# what cannot run from an on-disk store: LSNMF solves every cell's and every peak's factors exactly in each
# iteration, SnapATAC2's spectral embedding takes an AnnData in memory
NEEDS_MEMORY = ("LSNMF", *SNAPATAC2_REFERENCES)
SKIPPED_FROM_STORE = "skipped: needs the matrix in memory"


@dataclass
class RunResult:
    """One method at one seed: its AnnData (the shared counts, its features, clusters, scores), or why it failed."""

    method: str
    seed: int
    status: str = "ok"
    adata: object = None
    model: object = None
    scores: dict = field(default_factory=dict)
    train_s: float = float("nan")
    peak_mb: float = float("nan")

    @property
    def clusters(self):
        return self.adata.obs["cluster"].to_numpy()


def fresh(adata):
    """A new AnnData over the same counts (not copied), labels and filter record: one run's workspace. Over a
    store (a backed AnnData), the store opened again: the counts stay on disk."""
    import anndata

    if getattr(adata, "isbacked", False):
        return io.store.read_backed(adata.filename)
    run = anndata.AnnData(X=adata.X, obs=adata.obs[[c for c in ("label",) if c in adata.obs]].copy(),
                          var=adata.var[[]].copy())
    run.uns["scatac"] = dict(adata.uns.get("scatac", {}))
    return run


def reference_names(snapatac2: bool = True) -> list:
    """The reference rows every comparison adds: LSI at both settings, and SnapATAC2's when it is importable."""
    names = list(LSI_REFERENCES)
    if snapatac2:
        try:
            import snapatac2  # noqa: F401

            names.extend(SNAPATAC2_REFERENCES)
        except ImportError:
            info("note: snapatac2 is not installed; its spectral reference is skipped (pip install snapatac2)")
    return names


def run_one(method: str, adata, latent_dim: int, seed: int, options: dict, n_clusters: int, n_init: int,
            trainer=None, debug: bool = False, resolution: float | None = None) -> RunResult:
    """Fit, cluster (K-means, and Leiden) and score one method at one seed; a failure becomes that row's status."""
    from scatac import tl
    from scatac.measure import PeakMemory

    if method in NEEDS_MEMORY and getattr(adata, "isbacked", False):
        return RunResult(method=method, seed=seed, status=SKIPPED_FROM_STORE)
    result = RunResult(method=method, seed=seed, adata=fresh(adata))
    started = time.perf_counter()
    size = OWN_SIZE.get(method, latent_dim)
    labels_key = "label" if "label" in adata.obs else None
    try:
        with PeakMemory() as memory:
            extra = {"trainer": trainer} if method in NEURAL else {"key_added": method} if method not in METHODS else {}
            result.model = FIT[method](result.adata, size, seed=seed, **options.get(method, {}), **extra)
        result.train_s, result.peak_mb = time.perf_counter() - started, memory.peak_mb
        features = result.adata.obsm[f"X_{method}"]
        # SnapATAC2's spectral embedding may give fewer components than asked (it drops negative eigenvalues)
        fewer_ok = method in SNAPATAC2_REFERENCES and features.ndim == 2 and 1 <= features.shape[1] <= size
        if features.shape != (adata.n_obs, size) and not (fewer_ok and features.shape[0] == adata.n_obs):
            raise TrainingFailed(f"features of shape {features.shape}, expected {(adata.n_obs, size)}")
        if not np.all(np.isfinite(features)):
            raise TrainingFailed("features with non-finite values")
        result.scores = tl.cluster(result.adata, use_rep=f"X_{method}", labels_key=labels_key, n_clusters=n_clusters,
                                   seed=seed, n_init=n_init)
        tl.neighbors(result.adata, use_rep=f"X_{method}", seed=seed)  # one search for Leiden and spectral
        leiden = tl.cluster(result.adata, use_rep=f"X_{method}", labels_key=labels_key, method="leiden",
                            n_clusters=None if resolution else n_clusters, resolution=resolution, seed=seed,
                            neighbors_key="neighbors", key_added="leiden")
        result.scores.update({f"{key}_leiden": leiden[key] for key in ("ARI", "NMI", "n_clusters", "resolution")
                              if key in leiden})
        if labels_key is not None:
            spectral_scores = tl.cluster(result.adata, use_rep=f"X_{method}", labels_key=labels_key, method="spectral",
                                         n_clusters=n_clusters, seed=seed, n_init=n_init, neighbors_key="neighbors",
                                         key_added="spectral")
            result.scores["ARI_spectral"] = spectral_scores["ARI"]
    except Exception as exc:  # a failing method (its own input error too) is its row; the comparison goes on
        reason = f"{exc.__class__.__name__}: {exc}".replace("\t", " ").replace("\n", " ")
        result.status = f"failed: {reason[:200]}"
        result.train_s = time.perf_counter() - started
        warn(f"{method} (seed {seed}) failed: {reason}")
        if debug:
            traceback.print_exc()
    return result


def run_comparison(adata, names, latent_dim: int, seeds, options: dict | None = None, n_clusters=None, n_init: int = 10,
                   device=None, progress: bool = True, debug: bool = False, resolution: float | None = None) -> list:
    """Every method at every seed on the same filtered `adata`; returns RunResults in order."""
    import sys

    from tqdm.auto import tqdm

    from scatac.evaluate import default_n_clusters
    from scatac.train import Trainer

    options = {name: dict(given) for name, given in (options or {}).items()}
    n_clusters = n_clusters or default_n_clusters(adata.obs["label"] if "label" in adata.obs else None)
    for method in methods.NEURAL:
        for name in method.sized_by_clusters:
            options.setdefault(method.name, {}).setdefault(name, n_clusters)
    trainer = Trainer(device=device, progress=progress, leave_progress=False)
    jobs = [(m, s) for m in names for s in seeds]
    bar = tqdm(jobs, desc="compare", unit="run", disable=not progress, file=sys.stderr)
    results = []
    for method, seed in bar:
        bar.set_postfix(method=method, seed=seed)
        results.append(run_one(method, adata, latent_dim, seed, options, n_clusters, n_init, trainer, debug, resolution))
    return results


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------
def summarize(results: list, names) -> list:
    """One row per method: mean and standard deviation over seeds of each score, seconds, peak MiB."""
    rows = []
    for method in names:
        runs = [r for r in results if r.method == method]
        ok = [r for r in runs if r.status == "ok"]
        row = {"method": method, "n_seeds": len(ok), "status": "ok" if len(ok) == len(runs) else next(r.status for r in runs if r.status != "ok")}
        for key in SCORE_KEYS:
            values = [r.scores[key] for r in ok if key in r.scores and not math.isnan(r.scores[key])]
            row[f"{key}_mean"] = float(np.mean(values)) if values else float("nan")
            row[f"{key}_std"] = float(np.std(values)) if values else float("nan")
        row["train_s"] = float(np.mean([r.train_s for r in ok])) if ok else float("nan")
        row["peak_mb"] = float(np.max([r.peak_mb for r in ok])) if ok else float("nan")
        rows.append(row)
    return rows


TABLE_COLUMNS = ["method", *[f"{k}_{s}" for k in SCORE_KEYS for s in ("mean", "std")], "train_s", "peak_mb", "n_seeds", "status"]


def format_cell(value):
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def render_table(rows, columns=TABLE_COLUMNS, fmt=format_cell) -> str:
    """A plain aligned text table for the terminal; `fmt` turns each value into its text."""
    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def pairwise_agreement(results: list, names) -> list:
    """ARI between the first-seed clusterings of every pair of methods (label-free agreement)."""
    from sklearn.metrics import adjusted_rand_score

    first = {m: next((r for r in results if r.method == m and r.status == "ok"), None) for m in names}
    rows = []
    for a in names:
        row = {"method": a}
        for b in names:
            ra, rb = first[a], first[b]
            row[b] = float(adjusted_rand_score(ra.clusters, rb.clusters)) if ra is not None and rb is not None else float("nan")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def epochs_flag(method: methods.Method) -> str:
    return f"--{method.name.lower()}-epochs"


def max_iter_flag(method: methods.Method) -> str:
    return f"--{method.name.lower()}-max-iter"


def build_parser():
    parser = cli.ArgumentParser(
        prog="compare.py",
        description="Run the suite's methods (and LSI, SnapATAC2 when installed) on the same data with the same "
                    "settings; write comparison.tsv, comparison.png, umap_grid.png and each method's outputs.",
    )
    cli.add_data_arguments(parser, latent_help="latent size shared by every method")
    group = parser.add_argument_group("comparison")
    group.add_argument("--methods", default=",".join(METHODS),
                       help=f"comma-separated subset of {','.join(METHODS)} (default: all); the references (LSI at the "
                            "latent size and at Signac's defaults, SnapATAC2 the same when installed) are always added")
    group.add_argument("--seeds", type=int, default=3, help="number of seeds, first-seed .. first-seed+N-1 (default 3)")
    group.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    group.add_argument("--n-init", type=int, default=params.N_INIT.default, help="K-means restarts, the same for every method (default 10)")
    group.add_argument("--no-snapatac2", action="store_true", help="skip SnapATAC2 even when it is installed")
    group.add_argument("--debug", action="store_true", help="print the traceback of a method that fails")
    group = parser.add_argument_group("epochs per method (defaults chosen by measurement; see docs/benchmarks.md)")
    for method in methods.NEURAL:
        defaults = [method.options[name].default for name in method.epoch_options]
        several = len(method.epoch_options) > 1
        group.add_argument(epochs_flag(method), type=int, nargs=len(method.epoch_options) if several else None,
                           default=defaults if several else defaults[0],
                           metavar=tuple(n.split("_")[0].upper() for n in method.epoch_options) if several else None,
                           help=f"{method.name} {' and '.join(method.epoch_options)} (default {' '.join(map(str, defaults))})")
    for method in methods.FACTORIZATIONS:
        default = method.options["max_iter"].default
        group.add_argument(max_iter_flag(method), type=int, default=default, help=f"{method.name} iterations (default {default})")
    groups = {}
    params.RUN.add_arguments(parser, groups, skip=("seed", "cluster"))  # both clusterings are scored
    groups["data"].add_argument("--transform", choices=params.TRANSFORMS, default=None,
                                help="one input transform for every autoencoder (default: each one's own, tfidf; see docs/user-guide/methods.md)")
    return parser


def options_from_args(args) -> dict:
    """Each method's options from compare's flags, checked by the methods' own rules."""
    options = {}
    for method in methods.NEURAL:
        values = getattr(args, epochs_flag(method)[2:].replace("-", "_"))
        given = dict(zip(method.epoch_options, values if isinstance(values, list) else [values]))
        if args.transform is not None:
            given["transform"] = args.transform
        options[method.name] = method.options.resolve(given, where=epochs_flag(method),
                                                      label=lambda p, m=method: epochs_flag(m))
    for method in methods.FACTORIZATIONS:
        value = getattr(args, max_iter_flag(method)[2:].replace("-", "_"))
        options[method.name] = {"max_iter": method.options["max_iter"].check(value, max_iter_flag(method))}
    return options


def main(argv=None):
    args = build_parser().parse_args(argv)
    run = params.RUN.resolve({p.name: getattr(args, p.name) for p in params.RUN if p.name not in ("seed", "cluster")},
                             label=lambda p: p.flag)
    latent_dim = params.LATENT_DIM.check(args.latent_dim, "latent_dim")
    names = methods.parse_names(args.methods, METHODS, where="--methods")
    options = options_from_args(args)
    seeds = params.Param("seeds", int, low=1).check(args.seeds, "--seeds")
    first_seed = params.SEED.check(args.first_seed, "--first-seed")
    n_init = params.N_INIT.check(args.n_init, "--n-init")
    outdir = check_outdir(args.outdir)
    if run["store"] is not None:
        io.store.check_store_path(run["store"], args.data, outdir=outdir, **io.store.store_keywords(run, args.labels))
    shape = io.peek_shape(args.data)
    if shape is not None:
        params.check_latent_size(latent_dim, *shape, source=args.data, kept=False)
    with files.output_lock(outdir):
        return _compare(args, run, latent_dim, names, options, seeds, first_seed, n_init, outdir)


def check_outdir(outdir) -> Path:
    """compare's output folder, refused if it (or a method folder in it) holds anything a comparison does not write."""
    outdir = files.check_outdir(outdir, known=(*OUTPUT_FILES, *FIT))
    for method in FIT:
        if (outdir / method).exists():
            files.check_outdir(outdir / method, known=(*export.RESULT_FILES, "scores_by_seed.tsv"))
    return outdir


def _compare(args, run, latent_dim, names, options, seeds, first_seed, n_init, outdir):
    import scatac
    from scatac import runtime

    device = runtime.select_device(run["device"])
    thresholds = {name: run[name] for name in params.FILTER.params}
    if run["store"] is not None:
        _, note = io.store.prepare_store(run["store"], args.data, **io.store.store_keywords(run, args.labels))
        adata = io.store.read_backed(run["store"])
        params.check_latent_size(latent_dim, adata.n_obs, adata.n_vars, source=args.data)
        info(note)
        info(scatac.pp.filter_message(adata.uns["scatac"]["filter"], thresholds))
    else:
        adata = scatac.read(args.data, labels=args.labels, **{name: run[name] for name in params.READ.params})
        scatac.pp.filter(adata, **thresholds)
        params.check_latent_size(latent_dim, adata.n_obs, adata.n_vars, source=args.data)
    names.extend(reference_names(not args.no_snapatac2))
    skipped = [name for name in names if name in NEEDS_MEMORY] if run["store"] is not None else []
    if skipped:
        info(f"{', '.join(skipped)}: skipped, {'they need' if len(skipped) > 1 else 'it needs'} the matrix in memory "
             f"and the data are read from the store {run['store']}")
    runtime.set_threads(run["threads"])
    seed_list = list(range(first_seed, first_seed + seeds))
    results = run_comparison(adata, names, latent_dim, seed_list, options, run["n_clusters"], n_init, device,
                             resolution=run["resolution"])
    info("comparison: writing results ...")
    with files.staged_folder(outdir) as stage:
        write_outputs(stage, adata, results, names, {**vars(args), **run, "device": str(device)}, seeds)
    print(render_table(summarize(results, names)))
    print(f"comparison: results in {outdir}")
    return results


def write_outputs(outdir: Path, adata, results, names, settings: dict, n_seeds: int):
    """Each method's usual files (first seed) in its subfolder, then the table and the two figures."""
    from scatac import export, pl, tl

    labelled = "label" in adata.obs
    labels_key = "label" if labelled else None
    panels = []
    for method in names:
        first = next((r for r in results if r.method == method and r.status == "ok"), None)
        if first is None:
            continue
        if not settings["no_umap"]:
            tl.umap(first.adata, use_rep=f"X_{method}", seed=first.seed)
            groups = adata.obs["label"].astype(str).to_numpy() if labelled else first.adata.obs["cluster"].astype(str).to_numpy()
            panels.append((method, np.asarray(first.adata.obsm["X_umap"]), groups))
        folder = outdir / method
        folder.mkdir()
        files.write_table(folder / "scores_by_seed.tsv", ["seed", "status", *SCORE_KEYS, "train_s", "peak_mb"],
                          [[r.seed, r.status, *[files.format_float(r.scores.get(k, float("nan"))) for k in SCORE_KEYS],
                            files.format_float(r.train_s), files.format_float(r.peak_mb)] for r in results if r.method == method])
        export.write_results(folder, first.adata, method, labels_key=labels_key, model=first.model,
                             settings={**settings, "method": method}, seconds={"train_s": first.train_s})
        export.write_figures(folder, first.adata, method, labels_key=labels_key)

    rows = summarize(results, names)
    files.write_table(outdir / "comparison.tsv", TABLE_COLUMNS, [[format_cell(r[c]) for c in TABLE_COLUMNS] for r in rows])
    title = f"{Path(str(settings['data'])).name}: {len(rows)} methods, latent {settings['latent_dim']}, seeds {n_seeds}"
    files.save_figure(pl.comparison(rows, labelled, title), outdir / "comparison.png")
    if not labelled:
        agreement = pairwise_agreement(results, names)
        files.write_table(outdir / "agreement.tsv", ["method", *names],
                          [[r["method"], *[files.format_float(r[m]) for m in names]] for r in agreement])
    if panels:
        files.save_figure(pl.umap_grid(panels, adata.obs["label"].astype(str).to_numpy() if labelled else None),
                          outdir / "umap_grid.png")


if __name__ == "__main__":
    cli.run_cli(main)
