"""Clusters, scores and UMAP coordinates of a method's features: numbers only, no files, no figures.

Every method goes through the same steps, so the comparison is fair: each feature centred and each
cell L2-normalized (the clustering space), K-means with the same k and restarts or Leiden on the same
neighbour graph construction, the same scores.
"""
from __future__ import annotations

import warnings

import numpy as np


def cluster_space(latent: np.ndarray) -> np.ndarray:
    """Centre each feature, then L2-normalize each cell: the space K-means, Leiden's graph and the silhouette use.

    The same step for every method keeps the comparison fair; the cosine geometry removes the overall scale that
    differs between models.

    Parameters
    ----------
    latent : numpy.ndarray
        (n_cells, n_features) features.

    Returns
    -------
    numpy.ndarray
        (n_cells, n_features) float32.
    """
    centred = latent - latent.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return (centred / np.maximum(norms, 1e-12)).astype(np.float32)


SILHOUETTE_SAMPLE = 10000
MINIBATCH_KMEANS_ABOVE = 50000


def kmeans(features: np.ndarray, n_clusters: int, seed: int, n_init: int = 10) -> np.ndarray:
    """K-means of features, MiniBatchKMeans above `MINIBATCH_KMEANS_ABOVE` cells.

    Parameters
    ----------
    features : numpy.ndarray
        (n_cells, n_features), in the clustering space.
    n_clusters : int
        K (at most the cells).
    seed : int
        The random state.
    n_init : int
        Restarts.

    Returns
    -------
    numpy.ndarray
        (n_cells,) int cluster ids.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n_clusters = max(1, min(n_clusters, features.shape[0]))
    if features.shape[0] > MINIBATCH_KMEANS_ABOVE:
        model = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init, batch_size=4096)
    else:
        model = KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init)
    return model.fit_predict(features)


CLUSTERINGS = ("kmeans", "leiden", "spectral")
NEIGHBORS = 15  # scanpy.pp.neighbors' n_neighbors (the cell itself included), and UMAP's
LEIDEN_RESOLUTION = 1.0  # scanpy.tl.leiden's default: Leiden's resolution when no number of clusters is asked for
BISECTION_STEPS = 30


def neighbors(features: np.ndarray, n_neighbors: int = NEIGHBORS, seed: int = 0):
    """The cells' k-nearest-neighbour graph in the clustering space, weighted as scanpy.pp.neighbors weighs it.

    Exact neighbours (scikit-learn), then UMAP's fuzzy simplicial set turns the distances into symmetric connectivities
    in [0, 1].

    Parameters
    ----------
    features : numpy.ndarray
        (n_cells, n_features), from `cluster_space`.
    n_neighbors : int
        Neighbours per cell, the cell itself counted (as scanpy counts them).
    seed : int
        The fuzzy simplicial set's random state.

    Returns
    -------
    distances : scipy.sparse.csr_matrix
        (n_cells, n_cells) float32, each cell's n_neighbors - 1 nearest other cells with their Euclidean distance
        (scanpy's obsp["distances"]).
    connectivities : scipy.sparse.csr_matrix
        (n_cells, n_cells) float32, the symmetric weights (scanpy's obsp["connectivities"]).
    """
    import scipy.sparse as sp
    from sklearn.neighbors import NearestNeighbors
    from umap.umap_ import fuzzy_simplicial_set

    n_cells = features.shape[0]
    n_neighbors = int(min(n_neighbors, n_cells))
    found, indices = NearestNeighbors(n_neighbors=n_neighbors).fit(features).kneighbors(features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        connectivities, _, _ = fuzzy_simplicial_set(features, n_neighbors, np.random.RandomState(seed), "euclidean",
                                                    knn_indices=indices, knn_dists=found.astype(np.float32))
    others = indices != np.arange(n_cells)[:, None]  # scanpy's distances leave each cell itself out
    rows = np.repeat(np.arange(n_cells), others.sum(axis=1))
    distances = sp.csr_matrix((found[others].astype(np.float32), (rows, indices[others])), shape=(n_cells, n_cells))
    return distances, sp.csr_matrix(connectivities, dtype=np.float32)


def as_igraph(connectivities):
    """An undirected igraph.Graph of symmetric connectivities, each edge once.

    Parameters
    ----------
    connectivities : scipy.sparse.csr_matrix
        (n_cells, n_cells), symmetric.

    Returns
    -------
    igraph.Graph
        The weights in the edge attribute "weight".
    """
    import igraph

    upper = connectivities.tocoo()
    keep = upper.row < upper.col  # symmetric: each edge once
    return igraph.Graph(n=connectivities.shape[0], edges=np.column_stack([upper.row[keep], upper.col[keep]]).tolist(),
                        edge_attrs={"weight": upper.data[keep].astype(float).tolist()}, directed=False)


def neighbor_graph(features: np.ndarray, n_neighbors: int = NEIGHBORS, seed: int = 0):
    """`neighbors`' connectivities of features as an igraph.Graph: what Leiden and spectral clustering cut.

    Parameters
    ----------
    features : numpy.ndarray
        (n_cells, n_features), in the clustering space.
    n_neighbors : int
        Neighbours per cell, the cell itself counted.
    seed : int
        The fuzzy simplicial set's random state.

    Returns
    -------
    igraph.Graph
    """
    return as_igraph(neighbors(features, n_neighbors, seed)[1])


def _leiden_once(graph, resolution: float, seed: int) -> np.ndarray:
    import random

    import igraph

    # igraph draws from Python's random module: a generator of our own makes the partition the seed's alone
    igraph.set_random_number_generator(random.Random(seed))
    try:
        # two iterations, scanpy.tl.leiden's default with igraph: iterating until stable was several times slower on
        # 100,000 simulated cells, at the same modularity and clusters (docs/benchmarks.md)
        partition = graph.community_leiden(objective_function="modularity", weights="weight", resolution=resolution,
                                           n_iterations=2)
    finally:
        igraph.set_random_number_generator(random)
    return np.asarray(partition.membership)


def leiden(features: np.ndarray | None, n_clusters: int | None = None, seed: int = 0, resolution: float | None = None,
           graph=None):
    """Leiden (modularity) on the neighbour graph of `features`, or on `graph` when given.

    With `resolution`, one partition at it. Else with `n_clusters`, the resolution is bisected until Leiden gives that
    many clusters (the protocol of Chen et al. 2019, Genome Biology's benchmark of scATAC-seq methods, there with
    Louvain), the closest count found if none is exact; else `LEIDEN_RESOLUTION`.

    Parameters
    ----------
    features : numpy.ndarray or None
        (n_cells, n_features) in the clustering space; None when `graph` is given.
    n_clusters : int or None
        The number of clusters to bisect the resolution to.
    seed : int
        Leiden's random state (and the graph's).
    resolution : float or None
        One partition at this resolution.
    graph : igraph.Graph or None
        The graph to cut (`as_igraph`), instead of building one.

    Returns
    -------
    clusters : numpy.ndarray
        (n_cells,) int cluster ids.
    resolution : float
        The resolution used.
    """
    graph = neighbor_graph(features, seed=seed) if graph is None else graph
    if resolution is not None or n_clusters is None:
        resolution = LEIDEN_RESOLUTION if resolution is None else float(resolution)
        return _leiden_once(graph, resolution, seed), resolution
    best = None

    def attempt(resolution):
        nonlocal best
        clusters = _leiden_once(graph, resolution, seed)
        found = len(np.unique(clusters))
        if best is None or abs(found - n_clusters) < abs(best[2] - n_clusters):
            best = (clusters, resolution, found)
        return found

    low, high = 0.0, 3.0
    while attempt(high) < n_clusters and high < 100:  # even the top of the range gives too few: widen it
        low, high = high, 2 * high
    for _ in range(BISECTION_STEPS):
        if best[2] == n_clusters:
            break
        middle = (low + high) / 2
        if attempt(middle) < n_clusters:
            low = middle
        else:
            high = middle
    return best[0], best[1]


def spectral(features: np.ndarray | None, n_clusters: int, seed: int = 0, n_init: int = 10, connectivities=None) -> np.ndarray:
    """Spectral clustering on the neighbour graph of `features`, or on `connectivities` when given.

    K-means on the cells' rows of the normalized graph Laplacian's leading eigenvectors, each row L2-normalized
    (scikit-learn's SpectralClustering on the precomputed graph). The graph is Leiden's (`neighbor_graph`: 15
    neighbours, scanpy's weights), so the clusters follow which cells neighbour which, not the features' global
    distances; K-means in the features themselves weighs every direction of them as much as the others, which splits a
    large type that has sub-groups before it isolates a small one (measured on the documentation's benchmarks page,
    where K-means broke on the cerebellum set). The eigenvectors come from LOBPCG, a block solver: a graph in pieces has
    its top eigenvalue several times over, which single-vector Lanczos resolves badly (it cut a long type and merged two
    apart ones), and scikit-learn's default shift-invert Lanczos was far slower at a few thousand cells.

    Parameters
    ----------
    features : numpy.ndarray or None
        (n_cells, n_features) in the clustering space; None when `connectivities` is given.
    n_clusters : int
        K.
    seed : int
        The random state.
    n_init : int
        K-means restarts on the eigenvectors.
    connectivities : scipy.sparse.csr_matrix or None
        (n_cells, n_cells) symmetric graph to cut instead of building one.

    Returns
    -------
    numpy.ndarray
        (n_cells,) int cluster ids.
    """
    import scipy.sparse as sp
    from sklearn.cluster import SpectralClustering

    if connectivities is None:
        connectivities = neighbors(features, seed=seed)[1]
    n_cells = connectivities.shape[0]
    n_clusters = max(1, min(n_clusters, n_cells - 1))
    adjacency = sp.csr_matrix(connectivities, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "graph is not fully connected": components are what it should find
        model = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", eigen_solver="lobpcg",
                                   random_state=seed, n_init=n_init, assign_labels="kmeans")
        return model.fit_predict(adjacency)


def knn_purity(features: np.ndarray, labels: np.ndarray, n_neighbors: int = NEIGHBORS) -> float:
    """The mean share of each cell's nearest neighbours that have its label, whichever clustering is run.

    How well the features keep the types apart locally.

    Parameters
    ----------
    features : numpy.ndarray
        (n_cells, n_features), in the clustering space.
    labels : numpy.ndarray
        (n_cells,) the cells' labels.
    n_neighbors : int
        Neighbours per cell, the cell itself counted and then left out (n_neighbors - 1 are compared).

    Returns
    -------
    float
        In [0, 1]; chance is the sum of the squared type fractions. NaN with fewer than two cells.
    """
    from sklearn.neighbors import NearestNeighbors

    n_neighbors = int(min(n_neighbors, features.shape[0]))
    if n_neighbors < 2:
        return float("nan")
    labels = np.asarray(labels)
    neighbours = NearestNeighbors(n_neighbors=n_neighbors).fit(features).kneighbors(features, return_distance=False)
    # the cell itself is its own nearest neighbour except between duplicates: drop one column per cell, itself if there
    is_self = neighbours == np.arange(len(labels))[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), n_neighbors - 1)
    keep = np.ones_like(neighbours, dtype=bool)
    keep[np.arange(len(labels)), drop] = False
    others = neighbours[keep].reshape(len(labels), n_neighbors - 1)
    return float((labels[others] == labels[:, None]).mean())


def matched_confusion(labels: np.ndarray, clusters: np.ndarray):
    """The labels x clusters table, clusters in the order of the optimal one-to-one matching to labels.

    Parameters
    ----------
    labels : numpy.ndarray
        (n_cells,) labels.
    clusters : numpy.ndarray
        (n_cells,) int cluster ids.

    Returns
    -------
    table : pandas.DataFrame
        Counts, labels x clusters, the matched clusters first.
    mapping : dict
        {cluster: label} of the matching (unmatched clusters are left out).
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
    """The scores of a clustering: ARI, NMI, F1 and accuracy against the labels, and the silhouette.

    F1 (macro) and accuracy are taken after the optimal one-to-one matching of clusters to labels.

    The silhouette is of the clusters in the clustering space, on a fixed random sample of at most `SILHOUETTE_SAMPLE`
    cells (it is quadratic in cells).

    Parameters
    ----------
    features : numpy.ndarray
        (n_cells, n_features), in the clustering space.
    clusters : numpy.ndarray
        (n_cells,) int cluster ids.
    labels : numpy.ndarray or None
        (n_cells,) labels.
    seed : int
        The silhouette's sample.

    Returns
    -------
    dict
        ARI, NMI, F1, accuracy (with labels) and silhouette (NaN with one cluster or one cell per cluster).
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


def evaluate(latent: np.ndarray, labels, n_clusters: int | None, seed: int, n_init: int = 10, method: str = "kmeans",
             resolution: float | None = None, connectivities=None):
    """Cluster the clustering space of `latent` and score it: what every method of a run goes through.

    Parameters
    ----------
    latent : numpy.ndarray
        (n_cells, n_features) features.
    labels : numpy.ndarray or None
        (n_cells,) labels.
    n_clusters : int or None
        K of K-means and spectral clustering (None: the number of label types, else 8), or the count Leiden's
        resolution is bisected to (None: the number of label types; without labels `LEIDEN_RESOLUTION`).
    seed : int
        The clustering's random state.
    n_init : int
        K-means restarts.
    method : {'kmeans', 'leiden', 'spectral'}
        The clustering.
    resolution : float or None
        Leiden's resolution, instead of bisecting it.
    connectivities : scipy.sparse.csr_matrix or None
        The neighbour graph of these features (`neighbors`) for Leiden and spectral clustering to cut instead of
        building their own.

    Returns
    -------
    clusters : numpy.ndarray
        (n_cells,) int cluster ids.
    scores : dict
        `score_clusters`' scores, n_clusters, n_cells, Leiden's resolution, and with labels knn_purity (which no
        clustering changes).
    confusion : pandas.DataFrame or None
        `matched_confusion`'s table, with labels.
    """
    features = cluster_space(latent)
    if method == "leiden":
        target = n_clusters if n_clusters is not None else (len(set(labels)) if labels is not None else None)
        graph = as_igraph(connectivities) if connectivities is not None else None
        clusters, used = leiden(features, target, seed, resolution, graph=graph)
        scores_extra = {"resolution": float(used)}
    elif method == "spectral":
        n_clusters = default_n_clusters(labels) if n_clusters is None else n_clusters
        clusters = spectral(features, n_clusters, seed, n_init=n_init, connectivities=connectivities)
        scores_extra = {}
    else:
        n_clusters = default_n_clusters(labels) if n_clusters is None else n_clusters
        clusters = kmeans(features, n_clusters, seed, n_init=n_init)
        scores_extra = {}
    scores = score_clusters(features, clusters, labels, seed)
    scores["n_clusters"] = int(len(np.unique(clusters)))
    scores.update(scores_extra)
    scores["n_cells"] = int(latent.shape[0])
    if labels is not None:
        scores["knn_purity"] = knn_purity(features, labels)
    confusion = matched_confusion(labels, clusters)[0] if labels is not None else None
    return clusters, scores, confusion


# Above this many cells UMAP is fitted on a random sample of this many and the other cells are placed by the fitted
# model's transform: the fit's neighbour search and layout grow with the cells fitted and keep all of them in memory,
# while the transform places cells against the sample a chunk at a time.
UMAP_FIT_CELLS = 200_000
UMAP_TRANSFORM_CHUNK = 50_000  # cells placed per transform call: its memory grows with the chunk


def umap_coordinates(latent: np.ndarray, seed: int) -> np.ndarray:
    """2-D UMAP of the latent features, computed on the clustering space (centred, L2-normalized).

    Parameters
    ----------
    latent : numpy.ndarray
        (n_cells, n_features) features.
    seed : int
        UMAP's random_state, and the sample's when there are more than `UMAP_FIT_CELLS` cells: UMAP is then fitted on
        `UMAP_FIT_CELLS` cells drawn by default_rng(seed) and places the others with its `transform`, in chunks of
        `UMAP_TRANSFORM_CHUNK` (one line on stderr says so).

    Returns
    -------
    numpy.ndarray
        (n_cells, 2) float32 coordinates, in the cells' order.
    """
    if latent.shape[0] > UMAP_FIT_CELLS:
        return _sampled_umap_coordinates(latent, seed)
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


def _umap_model(n_cells: int, seed: int):
    """umap_coordinates' UMAP for a fit on `n_cells` cells (the settings its in-memory path uses)."""
    import umap

    return umap.UMAP(
        n_neighbors=int(min(15, max(2, n_cells - 1))),
        min_dist=0.3,
        metric="euclidean",
        random_state=seed,
        low_memory=n_cells > 50000,
        n_epochs=200 if n_cells > 10000 else None,
    )


def _sampled_umap_coordinates(latent: np.ndarray, seed: int) -> np.ndarray:
    """umap_coordinates above UMAP_FIT_CELLS cells: fitted on a seeded random sample, the rest placed by transform."""
    from .errors import info

    n_cells = latent.shape[0]
    features = cluster_space(latent)  # centred over all cells, as the in-memory path centres them
    sample = np.zeros(n_cells, dtype=bool)
    sample[np.random.default_rng(seed).choice(n_cells, size=UMAP_FIT_CELLS, replace=False)] = True
    info(f"UMAP: fitted on a random sample of {UMAP_FIT_CELLS:,} of the {n_cells:,} cells (seed {seed}); the other "
         f"{n_cells - UMAP_FIT_CELLS:,} are placed by the fitted model's transform")
    coordinates = np.empty((n_cells, 2), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = _umap_model(UMAP_FIT_CELLS, seed)
        coordinates[sample] = reducer.fit_transform(features[sample])
        rest = np.flatnonzero(~sample)
        for start in range(0, len(rest), UMAP_TRANSFORM_CHUNK):
            chunk = rest[start:start + UMAP_TRANSFORM_CHUNK]
            coordinates[chunk] = reducer.transform(features[chunk])
    return coordinates


__all__ = ["evaluate", "cluster_space", "kmeans", "neighbors", "as_igraph", "neighbor_graph", "leiden", "spectral",
           "knn_purity", "matched_confusion", "score_clusters", "umap_coordinates"]
