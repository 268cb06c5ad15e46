"""Clusters, scores and UMAP coordinates of a method's features: numbers only, no files, no figures.

Every method goes through the same steps, so the comparison is fair: each feature centred and each
cell L2-normalized (the clustering space), K-means with the same k and restarts, the same scores.
"""
from __future__ import annotations

import warnings

import numpy as np


def cluster_space(latent: np.ndarray) -> np.ndarray:
    """Centre each latent dimension, then L2-normalize each cell: the space K-means and silhouette use.

    The same step is applied to every method, so the comparison stays fair; cosine
    geometry removes the overall scale that differs between models.
    """
    centred = latent - latent.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return (centred / np.maximum(norms, 1e-12)).astype(np.float32)


SILHOUETTE_SAMPLE = 10000
MINIBATCH_KMEANS_ABOVE = 50000


def kmeans(features: np.ndarray, n_clusters: int, seed: int, n_init: int = 10) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n_clusters = max(1, min(n_clusters, features.shape[0]))
    if features.shape[0] > MINIBATCH_KMEANS_ABOVE:
        model = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init, batch_size=4096)
    else:
        model = KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init)
    return model.fit_predict(features)


def matched_confusion(labels: np.ndarray, clusters: np.ndarray):
    """Confusion matrix labels x clusters, with clusters re-ordered by the optimal one-to-one matching.

    Returns (table as DataFrame, mapping cluster -> label or None).
    """
    import pandas as pd
    from scipy.optimize import linear_sum_assignment

    label_names = sorted(set(labels))
    cluster_ids = sorted(set(int(c) for c in clusters))
    table = pd.crosstab(pd.Series(labels, name="label"), pd.Series(clusters, name="cluster"))
    table = table.reindex(index=label_names, columns=cluster_ids, fill_value=0)
    rows, cols = linear_sum_assignment(-table.to_numpy())
    mapping = {cluster_ids[c]: label_names[r] for r, c in zip(rows, cols)}
    ordered = [cluster_ids[c] for r, c in sorted(zip(rows, cols))] + [c for c in cluster_ids if c not in mapping]
    return table[ordered], mapping


def score_clusters(features: np.ndarray, clusters: np.ndarray, labels: np.ndarray | None, seed: int = 0) -> dict:
    """ARI, NMI, macro F1 and accuracy after optimal matching (with labels); silhouette always.

    Silhouette is of the clusters in the clustering space, on a fixed random sample
    of at most SILHOUETTE_SAMPLE cells (it is quadratic in cells).
    """
    from sklearn import metrics

    scores = {}
    if labels is not None:
        _, mapping = matched_confusion(labels, clusters)
        predicted = np.array([mapping.get(int(c), "__unmatched__") for c in clusters], dtype=object)
        scores["ARI"] = float(metrics.adjusted_rand_score(labels, clusters))
        scores["NMI"] = float(metrics.normalized_mutual_info_score(labels, clusters))
        scores["F1"] = float(metrics.f1_score(labels, predicted, labels=sorted(set(labels)), average="macro", zero_division=0))
        scores["accuracy"] = float(metrics.accuracy_score(labels, predicted))
    n_found = len(set(clusters.tolist()))
    if 2 <= n_found < features.shape[0]:
        sample = min(SILHOUETTE_SAMPLE, features.shape[0])
        scores["silhouette"] = float(metrics.silhouette_score(features, clusters, sample_size=sample, random_state=seed))
    else:
        scores["silhouette"] = float("nan")
    return scores


def default_n_clusters(labels) -> int:
    """K when none is given: the number of label types, else 8."""
    return len(set(labels)) if labels is not None else 8


def evaluate(latent: np.ndarray, labels, n_clusters: int | None, seed: int, n_init: int = 10):
    """K-means on the clustering space of `latent`; returns (clusters, scores, confusion table or None)."""
    if n_clusters is None:
        n_clusters = default_n_clusters(labels)
    features = cluster_space(latent)
    clusters = kmeans(features, n_clusters, seed, n_init=n_init)
    scores = score_clusters(features, clusters, labels, seed)
    scores["n_clusters"] = int(n_clusters)
    scores["n_cells"] = int(latent.shape[0])
    confusion = matched_confusion(labels, clusters)[0] if labels is not None else None
    return clusters, scores, confusion


def umap_coordinates(latent: np.ndarray, seed: int) -> np.ndarray:
    """2-D UMAP of the latent features, computed on the clustering space (centred, L2-normalized)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap

        n_neighbors = int(min(15, max(2, latent.shape[0] - 1)))
        reducer = umap.UMAP(
            n_neighbors=n_neighbors,
            min_dist=0.3,
            metric="euclidean",  # on L2-normalized rows this ranks neighbours as cosine does, and skips a slow JIT compile
            random_state=seed,
            low_memory=latent.shape[0] > 50000,
            n_epochs=200 if latent.shape[0] > 10000 else None,
        )
        return reducer.fit_transform(cluster_space(latent)).astype(np.float32)
