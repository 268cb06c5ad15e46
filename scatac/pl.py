"""Figures: each function draws and returns a matplotlib Figure; saving is the caller's (files.save_figure).

    pl.umap(adata, color="label")        the UMAP of obsm["X_umap"], coloured by an obs column
    pl.confusion(adata, key="cluster")   labels x clusters of tl.cluster
    pl.loss(adata, key="AE")             a method's loss per epoch
    pl.comparison(rows), pl.umap_grid(panels, labels)   compare.py's two figures
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Figures stay bounded whatever the labels: a legend or per-cell numbers only up to these counts, inches at most
MAX_LEGEND = 40
MAX_ANNOTATED = 900
MAX_INCHES = 20


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def category_colors(names: Sequence[str]) -> dict:
    """A fixed colour per category name, so that the same label has the same colour in every figure.

    Parameters
    ----------
    names : sequence of str
        The categories (repeats allowed).

    Returns
    -------
    dict
        {name: RGBA tuple}, the names sorted, from tab10 (tab20 above 10 categories).
    """
    plt = _pyplot()
    ordered = sorted(set(names), key=str)
    cmap = plt.get_cmap("tab20" if len(ordered) > 10 else "tab10")
    return {name: cmap(i % cmap.N) for i, name in enumerate(ordered)}


def embedding(ax, coords: np.ndarray, groups: Sequence, title: str, colors: dict | None = None, legend=True,
              legend_title: str | None = None):
    """Scatter 2-D coordinates on `ax`, one colour per group, the point size by the number of cells.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    coords : numpy.ndarray
        (n_cells, 2) coordinates.
    groups : sequence
        (n_cells,) each cell's group (compared as strings).
    title : str
        The axes' title.
    colors : dict or None
        {group: colour}; None: `category_colors` of the groups.
    legend : bool
        Draw a legend (up to `MAX_LEGEND` groups).
    legend_title : str or None
        The legend's title.

    Returns
    -------
    None
    """
    groups = np.asarray([str(g) for g in groups], dtype=object)
    colors = colors or category_colors(groups)
    size = max(0.5, min(12.0, 3000.0 / max(len(groups), 1)))
    for name in sorted(set(groups), key=str):
        mask = groups == name
        ax.scatter(coords[mask, 0], coords[mask, 1], s=size, color=colors[name], label=name, linewidths=0, rasterized=True)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    if legend and len(set(groups)) <= MAX_LEGEND:
        ax.legend(markerscale=max(1.0, 6.0 / size), fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  title=legend_title, title_fontsize=7)


def umap(adata, color: str = "label", basis: str = "X_umap", title: str | None = None):
    """The cells at `obsm[basis]`, coloured by `obs[color]`.

    Parameters
    ----------
    adata : AnnData
        With `obsm[basis]` (n_cells, 2) and `obs[color]`.
    color : str
        The obs column to colour by (the labels, a clustering).
    basis : str
        The coordinates (`scatac.tl.umap` writes "X_umap", or "X_<key_added>").
    title : str or None
        The title; None names the basis and the column.

    Returns
    -------
    matplotlib.figure.Figure
        One axes, a legend beside it.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    embedding(ax, np.asarray(adata.obsm[basis]), adata.obs[color].astype(str).to_numpy(),
              title or f"{basis} coloured by {color}", legend_title=color)
    return fig


def confusion(adata, key: str = "cluster", title: str | None = None):
    """The labels x clusters counts behind `scatac.tl.cluster`'s scores.

    Parameters
    ----------
    adata : AnnData
        With `uns[key]["confusion"]` and `uns[key]["scores"]` (`scatac.tl.cluster` with labels).
    key : str
        The clustering's key.
    title : str or None
        The title; None gives the ARI.

    Returns
    -------
    matplotlib.figure.Figure
        A heat map, clusters in the order of the optimal matching, counts written in (up to `MAX_ANNOTATED` cells).
    """
    plt = _pyplot()
    table = adata.uns[key]["confusion"]
    values = table.to_numpy()
    fig, ax = plt.subplots(figsize=(min(MAX_INCHES, 1.2 + 0.45 * values.shape[1]), min(MAX_INCHES, 1.0 + 0.4 * values.shape[0])))
    ax.imshow(values, cmap="Blues", aspect="auto")
    if values.shape[1] <= MAX_LEGEND:
        ax.set_xticks(range(values.shape[1]), [str(c) for c in table.columns], fontsize=7)
    if values.shape[0] <= MAX_LEGEND:
        ax.set_yticks(range(values.shape[0]), [str(r) for r in table.index], fontsize=7)
    ax.set_xlabel("cluster (ordered by best match)")
    ax.set_ylabel("label")
    threshold = values.max() / 2 if values.size else 0
    if values.size <= MAX_ANNOTATED:
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(j, i, str(values[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if values[i, j] > threshold else "black")
    ax.set_title(title or f"labels vs clusters (ARI {adata.uns[key]['scores']['ARI']:.2f})", fontsize=10)
    return fig


def loss(adata, key: str = "AE", title: str | None = None):
    """A method's loss per epoch, each training phase as its own line, in order.

    Parameters
    ----------
    adata : AnnData
        With `uns[key]["loss"]` (an autoencoder of `scatac.tl`).
    key : str
        The method's key.
    title : str or None
        The title.

    Returns
    -------
    matplotlib.figure.Figure
        Loss against epoch, all phases in order (StackedAE's pretraining, then fine-tuning).
    """
    plt = _pyplot()
    history = adata.uns[key]["loss"]
    fig, ax = plt.subplots(figsize=(6, 4))
    phases = list(dict.fromkeys(history["phase"]))
    step = 0
    for phase in phases:
        values = history.loc[history["phase"] == phase, "loss"].to_numpy()
        ax.plot(np.arange(step + 1, step + len(values) + 1), values, label=phase)
        step += len(values)
    ax.set_xlabel("epoch (all phases in order)")
    ax.set_ylabel("loss")
    ax.set_title(title or f"{key} training loss", fontsize=10)
    if len(phases) > 1:
        ax.legend(fontsize=7)
    return fig


def comparison(rows: list, labelled: bool, title: str):
    """Each method's scores side by side, mean with standard-deviation error bars: compare.py's comparison.png.

    Parameters
    ----------
    rows : list of dict
        One per method, as compare.py summarizes them: method, status, n_seeds and "<metric>_mean" / "<metric>_std" of
        ARI, NMI, F1, silhouette (and ARI_leiden).
    labelled : bool
        Whether there were labels (without, the silhouette only).
    title : str
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
        Grouped bars, a failed method marked.
    """
    plt = _pyplot()
    metrics = ["ARI", "NMI", "F1", "silhouette"] if labelled else ["silhouette"]
    if labelled and any("ARI_leiden_mean" in r for r in rows):
        metrics.insert(1, "ARI_leiden")
    names = [r["method"] for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(names) * len(metrics) / 2.5, 4))
    width = 0.8 / len(metrics)
    x = np.arange(len(names))
    for i, metric in enumerate(metrics):
        means = [r[f"{metric}_mean"] for r in rows]
        stds = [0 if math.isnan(r[f"{metric}_std"]) else r[f"{metric}_std"] for r in rows]
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, np.nan_to_num(means), width, yerr=stds, capsize=2, label=metric)
    for j, r in enumerate(rows):
        if r["status"] != "ok" and r["n_seeds"] == 0:
            ax.text(j, 0.02, "failed", ha="center", va="bottom", rotation=90, fontsize=8, color="red")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("score (mean ± sd over seeds)")
    ax.set_ylim(min(0, *(np.nan_to_num([r["silhouette_mean"] for r in rows]))) - 0.05, 1.05)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8, ncol=len(metrics), loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    ax.set_title(title, fontsize=10)
    return fig


def umap_grid(panels: list, labels):
    """One UMAP per method: compare.py's umap_grid.png.

    Parameters
    ----------
    panels : list of tuple
        (method, coords (n_cells, 2), groups (n_cells,)) per panel.
    labels : sequence or None
        The cells' labels: one colour per label in every panel and one legend; None colours each panel by its groups.

    Returns
    -------
    matplotlib.figure.Figure
        Up to four panels a row.
    """
    plt = _pyplot()
    n = len(panels)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + (1.8 if labels is not None else 0), 3.4 * nrows), squeeze=False)
    colors = category_colors(labels) if labels is not None else None
    for ax, (method, coords, groups) in zip(axes.ravel(), panels):
        embedding(ax, coords, groups, method, colors=colors or category_colors(groups), legend=labels is None)
        ax.set_xlabel("")
        ax.set_ylabel("")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if labels is not None and len(colors) <= MAX_LEGEND:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[name], label=name) for name in colors]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


__all__ = ["umap", "confusion", "loss", "comparison", "umap_grid", "embedding", "category_colors"]
