"""The Python API, on AnnData as scanpy's and SnapATAC2's: fit a method, cluster its features, UMAP.

    adata = scatac.read("data/demo", labels="data/demo/labels.txt")
    scatac.pp.filter(adata)
    scatac.tl.ae(adata, latent_dim=10)                              # obsm["X_AE"], uns["AE"]
    scatac.tl.cluster(adata, use_rep="X_AE", labels_key="label")   # obs["cluster"], uns["cluster"]["scores"]
    scatac.tl.umap(adata, use_rep="X_AE")                           # obsm["X_umap"]

Every method reads the counts in `adata.X` (or `adata.layers[layer]`), cells x peaks, and writes
`obsm["X_<key_added>"]` (n_cells, latent_dim) float32 and `uns[key_added]`: the method, its
checked params, and for the autoencoders the loss per epoch (a DataFrame) and seconds spent. The
autoencoders return the trained torch module (its `config` rebuilds it); the factorizations put
their peak loadings in `varm["<key_added>_loadings"]` (n_peaks, rank) and return None. Nothing
is written to disk; the method scripts are built on these same functions.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from . import methods
from .errors import fail
from .evaluate import evaluate, umap_coordinates
from .factorization import check_rank, fit_lsnmf, fit_nmf, lsi as lsi_features
from .params import CLUSTER, DEVICE, LATENT_DIM, N_CLUSTERS, N_INIT, RESOLUTION, SEED, check_latent_size


def _documented(method: methods.Method):
    """Append the method's declared options, with their defaults, to the function's docstring."""

    def decorate(function):
        lines = [f"    {p.name}: {p.describe()}; {p.help_text()}" for p in method.options]
        function.__doc__ += "\n    Options (keyword arguments):\n" + "\n".join(lines) + "\n"
        return function

    return decorate


def counts_of(adata, layer: str | None = None) -> sp.csr_matrix:
    """The count matrix a method reads: `adata.X`, or `adata.layers[layer]`, as CSR (cells x peaks)."""
    if layer is None:
        X = adata.X
    elif layer not in adata.layers:
        fail("layer", f"adata has no layer {layer!r} (layers: {', '.join(adata.layers) or 'none'})")
    else:
        X = adata.layers[layer]
    if X is None:
        fail("adata", "has no X matrix")
    return X if sp.isspmatrix_csr(X) else sp.csr_matrix(X)


def _source(adata) -> str:
    return adata.uns.get("scatac", {}).get("source", "adata")


def _storable(value):
    """A record h5ad can store in uns, so `adata.write_h5ad` works after any tl function: None entries left
    out, tuples as lists (DataFrames pass as they are)."""
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple):
        return list(value)
    return value


def _fit_neural(method: methods.Method, fit, adata, latent_dim, layer, seed, device, key_added, progress, trainer,
                options) -> object:
    """Check every argument, then transform the counts, train and encode: what each autoencoder's function shares."""
    import pandas as pd

    from .batches import TrainData
    from .nn import sampled_outputs
    from .runtime import select_device, set_seed
    from .train import Trainer

    options = method.options.resolve(options, where=method.name)
    seed, device = SEED.check(seed), DEVICE.check(device)
    latent_dim = LATENT_DIM.check(latent_dim)
    counts = counts_of(adata, layer)
    check_latent_size(latent_dim, *counts.shape, source=_source(adata))
    trainer = trainer or Trainer(device=select_device(device), progress=progress)
    started = time.perf_counter()
    set_seed(seed)
    data = TrainData.from_counts(counts, options["transform"])
    if options["neighbor_weight"] > 0:
        from .pp import reference_neighbors

        data.neighbors = reference_neighbors(counts, latent_dim, seed=seed)
    transform_s = time.perf_counter() - started
    started = time.perf_counter()
    first_call = len(trainer.calls)
    fitted = fit(data, latent_dim, options, trainer, seed)
    calls = trainer.calls[first_call:]
    adata.obsm[f"X_{key_added}"] = fitted.features
    adata.uns[key_added] = _storable({
        "method": method.name,
        "params": {"latent_dim": latent_dim, "seed": seed, "layer": layer, "device": str(trainer.device), **options},
        "decoder": "sampled" if fitted.model is not None and sampled_outputs(fitted.model) else "full",
        "batch_size": trainer.calls[-1]["batch_size"] if trainer.calls else None,
        # each training phase's epochs as run: fewer than asked where early stopping stopped it
        "epochs_trained": {call["phase"]: call["epochs_trained"] for call in calls},
        "loss": pd.DataFrame(fitted.history),
        "seconds": {"transform_s": transform_s, "train_s": time.perf_counter() - started},
        **fitted.extra,
    })
    return fitted.model


@_documented(methods.AE)
def ae(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, device: str = "auto", key_added: str = "AE",
       progress: bool = True, trainer=None, **options):
    """Plain autoencoder, trained as a denoising one (Bernoulli reconstruction of which peaks are open).

    Writes obsm["X_AE"] and uns["AE"] (key_added); returns the trained models.ae.AutoEncoder.
    `trainer` (a train.Trainer) overrides device and progress: compare.py and bench/scale.py pass theirs.
    """
    from .models import ae as model

    return _fit_neural(methods.AE, model.fit, adata, latent_dim, layer, seed, device, key_added, progress, trainer, options)


@_documented(methods.SPARSE_AE)
def sparse_ae(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, device: str = "auto",
              key_added: str = "SparseAE", progress: bool = True, trainer=None, **options):
    """Sparse autoencoder: a sigmoid code kept sparse by Ng's KL penalty; features are the code's logits.

    Writes obsm["X_SparseAE"] and uns["SparseAE"]; returns the trained models.sparse_ae.SparseAutoEncoder.
    """
    from .models import sparse_ae as model

    return _fit_neural(methods.SPARSE_AE, model.fit, adata, latent_dim, layer, seed, device, key_added, progress,
                       trainer, options)


@_documented(methods.STACKED_AE)
def stacked_ae(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, device: str = "auto",
               key_added: str = "StackedAE", progress: bool = True, trainer=None, **options):
    """Stacked autoencoder: each layer pretrained as a shallow autoencoder of the one below, then all fine-tuned.

    Writes obsm["X_StackedAE"] and uns["StackedAE"] (its loss marks each phase); returns the trained
    models.stacked_ae.StackedAutoEncoder.
    """
    from .models import stacked_ae as model

    return _fit_neural(methods.STACKED_AE, model.fit, adata, latent_dim, layer, seed, device, key_added, progress,
                       trainer, options)


@_documented(methods.VAE)
def vae(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, device: str = "auto", key_added: str = "VAE",
        progress: bool = True, trainer=None, **options):
    """Variational autoencoder with a Gaussian-mixture prior (SCALE's model) or a standard normal one.

    Features are the posterior means. Writes obsm["X_VAE"] and uns["VAE"] (with the prior and its
    number of components; n_components None here means 8); returns the trained
    models.vae.VariationalAutoEncoder.
    """
    from .models import vae as model

    return _fit_neural(methods.VAE, model.fit, adata, latent_dim, layer, seed, device, key_added, progress, trainer,
                       options)


def _fit_factorization(method: methods.Method, fit, adata, rank, layer, seed, key_added, options):
    """Check every argument, then factorize: what NMF's and LSNMF's functions share."""
    options = method.options.resolve(options, where=method.name)
    seed = SEED.check(seed)
    counts = counts_of(adata, layer)
    rank = check_rank(rank, *counts.shape, source=_source(adata))
    cell_factors, loadings, details = fit(counts, rank, seed=seed, **options)
    adata.obsm[f"X_{key_added}"] = cell_factors
    adata.varm[f"{key_added}_loadings"] = np.ascontiguousarray(loadings.T)
    details = {k: v for k, v in details.items() if k != "history"}
    adata.uns[key_added] = _storable({"method": method.name, "params": {"rank": rank, "seed": seed, "layer": layer, **options},
                                     "seconds": {"fit_s": details["fit_s"]}, "factorization": details})


@_documented(methods.NMF)
def nmf(adata, rank: int = 10, *, layer=None, seed: int = 0, key_added: str = "NMF", **options):
    """NMF (scikit-learn, Frobenius loss) of the transformed counts, V ~ W H, never densified.

    Writes obsm["X_NMF"] (cells x rank, W), varm["NMF_loadings"] (peaks x rank, H transposed) and uns["NMF"].
    """
    _fit_factorization(methods.NMF, fit_nmf, adata, rank, layer, seed, key_added, options)


@_documented(methods.LSNMF)
def lsnmf(adata, rank: int = 10, *, layer=None, seed: int = 0, key_added: str = "LSNMF", **options):
    """LSNMF (Lin 2007, nimfa's Lsnmf or the suite's sparse solver of the same algorithm), V ~ W H.

    Writes obsm["X_LSNMF"], varm["LSNMF_loadings"] (peaks x rank) and uns["LSNMF"].
    """
    _fit_factorization(methods.LSNMF, fit_lsnmf, adata, rank, layer, seed, key_added, options)


def lsi(adata, n_components: int = 10, *, layer=None, seed: int = 0, transform: str = "tfidf",
        unit_variance: bool = True, key_added: str = "LSI"):
    """LSI: a weighted binary matrix, truncated SVD, the first (depth) component dropped.

    transform "tfidf" (default): Signac's and ArchR's TF-IDF; "idf": SnapATAC2's IDF weighting with rows
    L2-normalized (the input of NMF and LSNMF by default). Writes obsm["X_<key_added>"] (n_cells,
    n_components), each component scaled to unit variance as Signac's RunSVD (unit_variance) or weighted by
    its singular value, and uns[key_added].
    """
    seed = SEED.check(seed)
    counts = counts_of(adata, layer)
    n_components = check_rank(n_components, *counts.shape, source=_source(adata))
    started = time.perf_counter()
    adata.obsm[f"X_{key_added}"] = lsi_features(counts, n_components, seed=seed, transform=transform,
                                                unit_variance=bool(unit_variance))
    adata.uns[key_added] = _storable({"method": "LSI", "params": {"n_components": n_components, "seed": seed,
                                                                  "transform": transform,
                                                                  "unit_variance": bool(unit_variance), "layer": layer},
                                     "seconds": {"fit_s": time.perf_counter() - started}})


def spectral(adata, n_components: int = 10, *, layer=None, seed: int = 0, key_added: str = "SnapATAC2"):
    """SnapATAC2's spectral embedding (`snapatac2.tl.spectral`, cosine similarity, every peak a feature), when installed.

    Writes obsm["X_SnapATAC2"] and uns["SnapATAC2"]. Raises ImportError without snapatac2.
    """
    import anndata
    import snapatac2 as snap

    from .pp import binarize

    seed = SEED.check(seed)
    binary = anndata.AnnData(X=binarize(counts_of(adata, layer)))
    binary.var["selected"] = True
    started = time.perf_counter()
    snap.tl.spectral(binary, n_comps=n_components, features="selected", random_state=seed)
    adata.obsm[f"X_{key_added}"] = np.asarray(binary.obsm["X_spectral"], dtype=np.float32)
    adata.uns[key_added] = {"method": "SnapATAC2", "params": {"n_components": n_components, "seed": seed},
                            "seconds": {"fit_s": time.perf_counter() - started}}


FIT = {"AE": ae, "SparseAE": sparse_ae, "StackedAE": stacked_ae, "VAE": vae, "NMF": nmf, "LSNMF": lsnmf}


def cluster(adata, use_rep: str = "X_AE", *, labels_key: str | None = None, n_clusters: int | None = None,
            method: str = "kmeans", resolution: float | None = None, seed: int = 0, n_init: int = 10,
            key_added: str = "cluster"):
    """Clusters of `obsm[use_rep]` in the clustering space (features centred, cells L2-normalized), scored.

    method "kmeans": K-means, k = n_clusters, or the number of label types when `labels_key` is given, else 8.
    method "leiden": Leiden (igraph, modularity) on the 15-nearest-neighbour graph weighted as scanpy.pp.neighbors,
    at `resolution`, or with the resolution bisected until it gives n_clusters (or the number of label types)
    clusters, else at resolution 1.0. method "spectral": K-means (k as above) on the leading eigenvectors of that
    graph, so that clusters follow neighbourhoods rather than global distances.
    Writes obs[key_added] (categorical cluster ids) and uns[key_added]: params, scores (ARI, NMI, macro F1 and
    accuracy after optimal matching, and knn_purity, with labels; silhouette always; n_clusters, n_cells; Leiden's
    resolution) and, with labels, the confusion table (labels x clusters, clusters in matched order). Returns the
    scores.
    """
    import pandas as pd

    if use_rep not in adata.obsm:
        fail("use_rep", f"adata has no obsm[{use_rep!r}] (obsm: {', '.join(adata.obsm) or 'none'})")
    if labels_key is not None and labels_key not in adata.obs:
        fail("labels_key", f"adata has no obs column {labels_key!r}")
    n_clusters, seed, n_init = N_CLUSTERS.check(n_clusters), SEED.check(seed), N_INIT.check(n_init)
    method, resolution = CLUSTER.check(method), RESOLUTION.check(resolution)
    labels = adata.obs[labels_key].astype(str).to_numpy() if labels_key is not None else None
    clusters, scores, confusion = evaluate(np.asarray(adata.obsm[use_rep]), labels, n_clusters, seed, n_init=n_init,
                                           method=method, resolution=resolution)
    adata.obs[key_added] = pd.Categorical([str(c) for c in clusters])
    record = {"params": {"use_rep": use_rep, "labels_key": labels_key, "method": method,
                         "n_clusters": scores["n_clusters"], "seed": seed,
                         **({"resolution": scores["resolution"]} if method == "leiden" else {"n_init": n_init})},
              "scores": scores}
    if confusion is not None:
        record["confusion"] = confusion.rename(columns=str)
    adata.uns[key_added] = _storable(record)
    return scores


def umap(adata, use_rep: str = "X_AE", *, seed: int = 0, key_added: str = "X_umap"):
    """2-D UMAP (umap-learn) of `obsm[use_rep]` in the clustering space; writes obsm[key_added] (n_cells, 2)."""
    if use_rep not in adata.obsm:
        fail("use_rep", f"adata has no obsm[{use_rep!r}] (obsm: {', '.join(adata.obsm) or 'none'})")
    adata.obsm[key_added] = umap_coordinates(np.asarray(adata.obsm[use_rep]), SEED.check(seed))


__all__ = ["ae", "sparse_ae", "stacked_ae", "vae", "nmf", "lsnmf", "lsi", "spectral", "cluster", "umap", "counts_of"]
