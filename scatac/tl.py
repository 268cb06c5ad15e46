"""The Python API, on AnnData as scanpy's and SnapATAC2's: fit a method, cluster its features, UMAP.

    adata = scatac.read("data/demo", labels="data/demo/labels.txt")
    scatac.pp.filter(adata)
    scatac.tl.ae(adata, latent_dim=10)                              # obsm["X_AE"], uns["AE"]
    scatac.tl.cluster(adata, use_rep="X_AE", labels_key="label")   # obs["cluster"], uns["cluster"]["scores"]
    scatac.tl.umap(adata, use_rep="X_AE")                           # obsm["X_umap"]

One key rule, SnapATAC2's: `key_added` names a result, which lands in obsm["X_<key_added>"] when it is
a representation of the cells (a method's features, a UMAP), in obs[key_added] when it is a clustering
(kmeans, leiden, cluster), in obsp as scanpy's neighbour graph (neighbors), and with its params in
uns[key_added] in every case. The number of dimensions is `latent_dim` for every method.

Every method reads the counts in `adata.X` (or `adata.layers[layer]`), cells x peaks, and writes
`obsm["X_<key_added>"]` (n_cells, latent_dim) float32 and `uns[key_added]`: the method, its
checked params, and for the autoencoders the loss per epoch (a DataFrame) and seconds spent; the
factorizations add their peak loadings in `varm["<key_added>_loadings"]` (n_peaks, latent_dim).
One return rule: a function returns None, except what an AnnData cannot hold: the autoencoders
return their trained torch module (its `config` rebuilds it), and the scoring functions (score,
and cluster, which also stores them) return the scores. Nothing is written to disk; the method
scripts are built on these same functions.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from . import methods
from .errors import fail, info
from .evaluate import evaluate, umap_coordinates
from .factorization import (check_rank, fit_lsnmf, fit_lsnmf_stored, fit_nmf, fit_nmf_stored, lsi as lsi_features,
                            lsi_stored)
from .models import fill_doc
from .params import CLUSTER, DEVICE, LATENT_DIM, N_CLUSTERS, N_INIT, RESOLUTION, SEED, check_latent_size


# The numpydoc entries that the four autoencoders' functions (neural_*) and the two factorizations' (factorization_*)
# share: a docstring line "{neural_parameters}" (and the others) stands for the block, filled in by `_documented`
# (scatac.models.fill_doc).
SHARED_DOCS = {
    "neural_parameters": """
    adata : AnnData
        Counts, cells x peaks, in `X` (or `layer`); in memory, or backed by an on-disk store
        (`anndata.read_h5ad(store, backed="r")`, see `scatac.io.convert_to_store`), whose cells are then streamed in
        blocks and the neighbour term is off.
    latent_dim : int
        Features per cell: at least 1, below the peaks and at most the cells.
    layer : str or None
        Read `adata.layers[layer]` instead of `X` (in memory only).
    seed : int
        Seeds the weights, the batches and the dropout: the same seed on CPU gives the same features.
    device : {'auto', 'cpu', 'cuda', 'mps'}
        Where to train; 'auto': cuda, then mps, then cpu.
    key_added : str
        Where the results go (below).
    progress : bool
        Show a progress bar per training phase.
    trainer : scatac.train.Trainer or None
        Trains the model instead of a Trainer made from `device` and `progress` (compare.py and the benches pass
        their own).
    **options
        The method's options, as the script's flags (listed under Other Parameters with their rules and defaults).
    """,
    "neural_writes": """
    obsm["X_<key_added>"]
        (n_cells, latent_dim) float32 features, in cell order.
    uns[key_added]
        method, params (latent_dim, seed, layer, device and every option as used), decoder ('full' or 'sampled'),
        batch_size, epochs_trained (per training phase; fewer than asked where early stopping stopped),
        loss (a DataFrame, one row per epoch: phase, epoch, loss and its terms), seconds (transform_s, train_s)
        and, under torchrun, distributed (how the cells were shared among the processes).
    """,
    "neural_raises": """
    scatac.InputError
        An argument or option that breaks its rule, before any training.
    scatac.TrainingFailed
        The loss became NaN or infinite.
    """,
    "factorization_writes": """
    obsm["X_<key_added>"]
        (n_cells, latent_dim) float32, the cell factors W.
    varm["<key_added>_loadings"]
        (n_peaks, latent_dim) float32, the peak loadings H transposed: which peaks each factor opens.
    uns[key_added]
        method, params (latent_dim, seed, layer and every option as used), seconds (fit_s), factorization (the fit's
        details: backend, iterations, reconstruction error, ...) and, from a store, streamed (True).
    """,
    "factorization_raises": """
    scatac.InputError
        An argument or option that breaks its rule, before any work.
    """,
}


def _documented(method: methods.Method):
    """Fill the function's docstring's shared blocks (SHARED_DOCS) and append the method's declared options to it, as
    numpydoc's Other Parameters section: each option's name, its rule and its help with the default (what
    `help(scatac.tl.vae)` and the API reference list)."""

    def decorate(function):
        function = fill_doc(**SHARED_DOCS)(function)
        # the docstring's indentation, that of its closing quotes' line (none where Python 3.13 dedented it)
        indent = function.__doc__.rpartition("\n")[2]
        lines = [f"{indent}{p.name} : {p.describe()}\n{indent}    {p.help_text()}" for p in method.options]
        function.__doc__ += f"\n{indent}Other Parameters\n{indent}----------------\n" + "\n".join(lines) + "\n"
        return function

    return decorate


def counts_of(adata, layer: str | None = None) -> sp.csr_matrix:
    """The count matrix a method reads: `adata.X`, or `adata.layers[layer]`, as CSR.

    Parameters
    ----------
    adata : AnnData
        Cells x peaks.
    layer : str or None
        The layer to read instead of `X`.

    Returns
    -------
    scipy.sparse.csr_matrix
        (n_cells, n_peaks): the matrix itself when it is CSR already, else a CSR copy.

    Raises
    ------
    scatac.InputError
        No such layer, or no `X`.
    """
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


# each autoencoder's module under scatac.models, imported when it is fitted (it imports torch; the cards do not)
MODEL_MODULES = {"AE": "ae", "SparseAE": "sparse_ae", "StackedAE": "stacked_ae", "VAE": "vae"}


def _stored_data(adata, run, name: str, progress: bool):
    """The cells of a backed AnnData (`anndata.read_h5ad(store, backed="r")`, a store of scatac.io.store) as
    streamed.StoredData: read in blocks, transformed per block with per-peak weights from one pass. The
    neighbour term needs every cell's neighbours at hand and is off when streaming (said once)."""
    from dataclasses import replace
    from types import MappingProxyType

    from .errors import info
    from .streamed import StoredData

    data = StoredData(adata.filename, run.options["transform"], progress=progress)
    if run.training.neighbor_weight > 0:
        info(f"{name}: neighbour term off: the cells are streamed from {adata.filename}")
        run = replace(run, training=replace(run.training, neighbor_weight=0.0),
                      options=MappingProxyType({**run.options, "neighbor_weight": 0.0}))
    return data, run


def _fit_neural(method: methods.Method, adata, latent_dim, *, layer, seed, device, key_added, progress, trainer,
                options: dict) -> object:
    """Check every argument, then transform the counts, train and encode: what each autoencoder's function shares.

    The card resolves `options` (methods.Method.resolve) into the model's arguments, the TrainConfig and its fit's
    schedule; the fit is the `fit` of the method's module (MODEL_MODULES). Writes obsm["X_<key_added>"] and
    uns[key_added]; returns the trained model.
    """
    import importlib

    import pandas as pd

    from .batches import TrainData
    from .nn import sampled_outputs
    from .runtime import select_device, set_seed
    from .train import Trainer

    run = method.resolve(options)
    seed, device = SEED.check(seed), DEVICE.check(device)
    latent_dim = LATENT_DIM.check(latent_dim)
    streamed = getattr(adata, "isbacked", False)
    if streamed and layer is not None:
        fail("layer", "a backed AnnData (an on-disk store) is trained on its X; layers are read in memory only")
    counts = None if streamed else counts_of(adata, layer)
    check_latent_size(latent_dim, adata.n_obs, adata.n_vars, source=_source(adata))
    fit = importlib.import_module(f"{__package__}.models.{MODEL_MODULES[method.name]}").fit
    trainer = trainer or Trainer(device=select_device(device), progress=progress)
    started = time.perf_counter()
    set_seed(seed)
    if streamed:
        data, run = _stored_data(adata, run, method.name, progress=trainer.progress)
    else:
        data = TrainData.from_counts(counts, run.options["transform"])
    if run.training.neighbor_weight > 0:
        from .pp import reference_neighbors

        data.neighbors = reference_neighbors(counts, latent_dim, seed=seed)
    transform_s = time.perf_counter() - started
    started = time.perf_counter()
    first_call = len(trainer.calls)
    fitted = fit(data, latent_dim, run.network, run.training, trainer, seed, **run.schedule)
    calls = trainer.calls[first_call:]
    adata.obsm[f"X_{key_added}"] = fitted.features
    adata.uns[key_added] = _storable({
        "method": method.name,
        "params": {"latent_dim": latent_dim, "seed": seed, "layer": layer, "device": str(trainer.device),
                   **run.options},
        "decoder": "sampled" if fitted.model is not None and sampled_outputs(fitted.model) else "full",
        "batch_size": trainer.calls[-1]["batch_size"] if trainer.calls else None,
        # each training phase's epochs as run: fewer than asked where early stopping stopped it
        "epochs_trained": {call["phase"]: call["epochs_trained"] for call in calls},
        "loss": pd.DataFrame(fitted.history),
        "seconds": {"transform_s": transform_s, "train_s": time.perf_counter() - started},
        # under torchrun: how the cells were shared out among the processes
        "distributed": trainer.shards,
        **fitted.extra,
    })
    return fitted.model


@_documented(methods.AE)
def ae(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, device: str = "auto", key_added: str = "AE",
       progress: bool = True, trainer=None, **options):
    """Train the plain autoencoder (a denoising one) and store each cell's features.

    The encoder reads the transformed counts (`transform`, TF-IDF by default) through dropout on the input peaks; the
    decoder gives the Bernoulli likelihood of which peaks are open, each cell's depth added to its logits; the
    neighbour term (`neighbor_weight`) keeps cells near their reference neighbours in the code. The features are the
    encoder's output without dropout. Same options, defaults and rules as `AE.py`.

    Parameters
    ----------
    {neural_parameters}

    Returns
    -------
    scatac.models.ae.AutoEncoder
        The trained module, on the training device; `AutoEncoder(**model.config)` rebuilds it.

    Writes
    ------
    {neural_writes}

    Raises
    ------
    {neural_raises}
    """
    return _fit_neural(methods.AE, adata, latent_dim, layer=layer, seed=seed, device=device, key_added=key_added,
                       progress=progress, trainer=trainer, options=options)


@_documented(methods.SPARSE_AE)
def sparse_ae(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, device: str = "auto",
              key_added: str = "SparseAE", progress: bool = True, trainer=None, **options):
    """Train the sparse autoencoder: a sigmoid code kept sparse by Ng's KL penalty.

    Each code unit is pushed to be active in about `sparsity_target` of the cells, so units behave like detectors of
    groups of cells. The features are the code's logits (the sigmoid's input), without dropout. Same options, defaults
    and rules as `SparseAE.py`.

    Parameters
    ----------
    {neural_parameters}

    Returns
    -------
    scatac.models.sparse_ae.SparseAutoEncoder
        The trained module, on the training device; `SparseAutoEncoder(**model.config)` rebuilds it.

    Writes
    ------
    {neural_writes}

    Raises
    ------
    {neural_raises}
    """
    return _fit_neural(methods.SPARSE_AE, adata, latent_dim, layer=layer, seed=seed, device=device,
                       key_added=key_added, progress=progress, trainer=trainer, options=options)


@_documented(methods.STACKED_AE)
def stacked_ae(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, device: str = "auto",
               key_added: str = "StackedAE", progress: bool = True, trainer=None, **options):
    """Train the stacked autoencoder: each layer pretrained on the one below, then all of them fine-tuned together.

    Layer 1 learns to rebuild the peaks, each later layer the codes of the layer below (held fixed), for
    `pretrain_epochs` each; then the whole stack is fine-tuned end to end for `finetune_epochs`. The loss in `uns` marks
    each phase. Same options, defaults and rules as `StackedAE.py`.

    Parameters
    ----------
    {neural_parameters}

    Returns
    -------
    scatac.models.stacked_ae.StackedAutoEncoder
        The trained module, on the training device; `StackedAutoEncoder(**model.config)` rebuilds it.

    Writes
    ------
    {neural_writes}

    Raises
    ------
    {neural_raises}
    """
    return _fit_neural(methods.STACKED_AE, adata, latent_dim, layer=layer, seed=seed, device=device,
                       key_added=key_added, progress=progress, trainer=trainer, options=options)


@_documented(methods.VAE)
def vae(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, device: str = "auto", key_added: str = "VAE",
        progress: bool = True, trainer=None, **options):
    """Train the variational autoencoder, SCALE's model with its Gaussian-mixture prior, or with a standard normal one.

    Each cell gets a Gaussian posterior; the KL term's weight rises from 0 to 1 over `kl_warmup` epochs, and the
    mixture prior is fit to the posterior means when the warm-up ends. The features are the posterior means, so the
    same seed gives the same features. Same options, defaults and rules as `VAE.py` (`n_components` None here means 8;
    the scripts pass the run's number of clusters).

    Parameters
    ----------
    {neural_parameters}

    Returns
    -------
    scatac.models.vae.VariationalAutoEncoder
        The trained module, on the training device; `VariationalAutoEncoder(**model.config)` rebuilds it.

    Writes
    ------
    {neural_writes}
        Also prior and n_components, as used.

    Raises
    ------
    {neural_raises}
    """
    return _fit_neural(methods.VAE, adata, latent_dim, layer=layer, seed=seed, device=device, key_added=key_added,
                       progress=progress, trainer=trainer, options=options)


# Cells a factorization or LSI of a backed AnnData reads from its store at a time (None: the store's
# DEFAULT_BLOCK_CELLS); memory grows with it. A module attribute, so that tests can cut small stores into many blocks.
STORE_BLOCK_CELLS = None


def _is_backed(adata) -> bool:
    return bool(getattr(adata, "isbacked", False))


def _store_of(adata, name: str, layer):
    """The store (scatac.io.store.StoredCounts) behind a backed AnnData, checked to hold exactly its cells and peaks.

    A view of a backed AnnData (`adata[cells]`) shares the file but not its rows, and a layer lives outside the
    store's X: both are refused, as the streamed autoencoders refuse a layer.
    """
    from .io.store import open_store

    if layer is not None:
        fail("layer", f"{name} of a backed AnnData (an on-disk store) reads its X; layers are read in memory only")
    if getattr(adata, "is_view", False):
        fail("adata", f"is a view of the on-disk store {adata.filename}: {name} reads the whole store; write the cells "
                      "as a store of their own (scatac.io.store.write_store), or load them (adata.to_memory())")
    counts = open_store(adata.filename)
    if counts.shape != tuple(adata.shape):
        counts.close()
        fail("adata", f"has {adata.n_obs} cells x {adata.n_vars} peaks but its store {adata.filename} holds "
                      f"{counts.n_cells} x {counts.n_peaks}")
    return counts


def _fit_factorization(method: methods.Method, fit, stored_fit, adata, latent_dim, *, layer, seed, key_added,
                       progress, options):
    """Check every argument, then factorize: what NMF's and LSNMF's functions share.

    An AnnData in memory is factorized by `fit` on its counts; one backed by a store by `stored_fit`, which reads the
    store a block of rows at a time.
    """
    options = method.options.resolve(options, where=method.name)
    seed = SEED.check(seed)
    streamed = _is_backed(adata)
    if streamed:
        counts = _store_of(adata, method.name, layer)
        if options.get("graph_weight", 0) > 0:  # the graph term needs every cell's neighbours at hand
            info(f"{method.name}: graph term off: the cells are read from {adata.filename} a block at a time")
            options = {**options, "graph_weight": 0.0}
        try:
            latent_dim = check_rank(latent_dim, *counts.shape, source=_source(adata))
            cell_factors, loadings, details = stored_fit(counts, latent_dim, seed=seed, block_cells=STORE_BLOCK_CELLS,
                                                         progress=progress, **options)
        finally:
            counts.close()
    else:
        counts = counts_of(adata, layer)
        latent_dim = check_rank(latent_dim, *counts.shape, source=_source(adata))
        cell_factors, loadings, details = fit(counts, latent_dim, seed=seed, **options)
    adata.obsm[f"X_{key_added}"] = cell_factors
    adata.varm[f"{key_added}_loadings"] = np.ascontiguousarray(loadings.T)
    details = {k: v for k, v in details.items() if k != "history"}
    record = {"method": method.name, "params": {"latent_dim": latent_dim, "seed": seed, "layer": layer, **options},
              "seconds": {"fit_s": details["fit_s"]}, "factorization": details}
    if streamed:
        record["streamed"] = True
    adata.uns[key_added] = _storable(record)


@_documented(methods.NMF)
def nmf(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, key_added: str = "NMF", progress: bool = True,
        **options):
    """Non-negative matrix factorization (scikit-learn, Frobenius loss) of the transformed counts, V ~ W H.

    V is the counts transformed by `transform` (the IDF-weighted binary matrix by default), never densified. In memory,
    `scatac.factorization.fit_nmf`: scikit-learn's NMF, or MiniBatchNMF above its threshold. An AnnData backed by an
    on-disk store is factorized from the store a block of cells at a time, never whole
    (`scatac.factorization.fit_nmf_stored`): MiniBatchNMF's partial_fit over the blocks, each transformed with weights
    fitted on all cells, in a shuffled order each pass; `max_iter` then counts passes over the store, stopped earlier by
    MiniBatchNMF's own rule.

    Parameters
    ----------
    adata : AnnData
        Counts, cells x peaks, in `X` (or `layer`); in memory, or backed by an on-disk store
        (`anndata.read_h5ad(store, backed="r")`), which is then read a block of cells at a time.
    latent_dim : int
        The rank of the factorization: at least 1, below the peaks and at most the cells.
    layer : str or None
        Read `adata.layers[layer]` instead of `X` (in memory only).
    seed : int
        Seeds the start and, from a store, the sample, block and cell orders.
    key_added : str
        Where the results go (below).
    progress : bool
        From a store, a tqdm bar over each pass's blocks (ignored in memory).
    **options
        The method's options, as the notebook's parameters (listed under Other Parameters with their rules and
        defaults).

    Returns
    -------
    None

    Writes
    ------
    {factorization_writes}

    Raises
    ------
    {factorization_raises}
    """
    _fit_factorization(methods.NMF, fit_nmf, fit_nmf_stored, adata, latent_dim, layer=layer, seed=seed,
                       key_added=key_added, progress=progress, options=options)


@_documented(methods.LSNMF)
def lsnmf(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, key_added: str = "LSNMF", progress: bool = True,
          **options):
    """LSNMF (Lin 2007): alternating non-negative least squares by projected gradient, V ~ W H.

    In memory, `scatac.factorization.fit_lsnmf`: nimfa's Lsnmf on a dense copy while that is under 1 GiB, else the
    suite's sparse solver of the same algorithm. An AnnData backed by an on-disk store is factorized by the same sparse
    solver with its two products with V taken a block of cells at a time (`scatac.factorization.fit_lsnmf_stored`):
    the same iterations, two passes over the store each, the factors in memory.

    Parameters
    ----------
    adata : AnnData
        Counts, cells x peaks, in `X` (or `layer`); in memory, or backed by an on-disk store
        (`anndata.read_h5ad(store, backed="r")`), which is then read a block of cells at a time.
    latent_dim : int
        The rank of the factorization: at least 1, below the peaks and at most the cells.
    layer : str or None
        Read `adata.layers[layer]` instead of `X` (in memory only).
    seed : int
        Seeds the random_vcol start.
    key_added : str
        Where the results go (below).
    progress : bool
        From a store, a tqdm bar over each pass's blocks (ignored in memory).
    **options
        The method's options, as the notebook's parameters (listed under Other Parameters with their rules and
        defaults); backend 'nimfa' needs the matrix in memory.

    Returns
    -------
    None

    Writes
    ------
    {factorization_writes}

    Raises
    ------
    {factorization_raises}
    """
    _fit_factorization(methods.LSNMF, fit_lsnmf, fit_lsnmf_stored, adata, latent_dim, layer=layer, seed=seed,
                       key_added=key_added, progress=progress, options=options)


def lsi(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, transform: str = "tfidf",
        unit_variance: bool = True, key_added: str = "LSI", progress: bool = True):
    """LSI: a weighted binary matrix, truncated SVD, the first (depth) component dropped.

    The reference every comparison carries. In memory, `scatac.factorization.lsi` (scikit-learn's TruncatedSVD). An
    AnnData backed by an on-disk store is read a block of cells at a time (`scatac.factorization.lsi_stored`): a
    randomized SVD whose every product with the matrix is a pass over the store.

    Parameters
    ----------
    adata : AnnData
        Counts, cells x peaks, in `X` (or `layer`); in memory or backed by a store.
    latent_dim : int
        The components kept, after the first is dropped.
    layer : str or None
        Read `adata.layers[layer]` instead of `X` (in memory only).
    seed : int
        The random projection's seed.
    transform : {'tfidf', 'idf'}
        'tfidf': Signac's and ArchR's TF-IDF, log1p(TF x IDF x 1e4), without L2 normalization; 'idf': SnapATAC2's IDF
        weighting with rows L2-normalized (the input of NMF and LSNMF by default).
    unit_variance : bool
        Scale each component to unit variance, as Signac's RunSVD does; False weights each by its singular value (U S).
    key_added : str
        Where the results go (below).
    progress : bool
        From a store, a tqdm bar over each pass's blocks (ignored in memory).

    Returns
    -------
    None

    Writes
    ------
    obsm["X_<key_added>"]
        (n_cells, latent_dim) float32 scores.
    uns[key_added]
        method ('LSI'), params (latent_dim, seed, transform, unit_variance, layer), seconds (fit_s) and, from a store,
        streamed (True).

    Raises
    ------
    scatac.InputError
        `latent_dim`, `transform` or `layer` that breaks its rule.
    """
    seed = SEED.check(seed)
    if _is_backed(adata):
        counts = _store_of(adata, "LSI", layer)
        try:
            latent_dim = check_rank(latent_dim, *counts.shape, source=_source(adata))
            started = time.perf_counter()
            features = lsi_stored(counts, latent_dim, seed=seed, transform=transform, unit_variance=bool(unit_variance),
                                  block_cells=STORE_BLOCK_CELLS, progress=progress)
        finally:
            counts.close()
    else:
        counts = counts_of(adata, layer)
        latent_dim = check_rank(latent_dim, *counts.shape, source=_source(adata))
        started = time.perf_counter()
        features = lsi_features(counts, latent_dim, seed=seed, transform=transform, unit_variance=bool(unit_variance))
    adata.obsm[f"X_{key_added}"] = features
    record = {"method": "LSI", "params": {"latent_dim": latent_dim, "seed": seed, "transform": transform,
                                          "unit_variance": bool(unit_variance), "layer": layer},
              "seconds": {"fit_s": time.perf_counter() - started}}
    if _is_backed(adata):
        record["streamed"] = True
    adata.uns[key_added] = _storable(record)


def spectral(adata, latent_dim: int = 10, *, layer=None, seed: int = 0, key_added: str = "SnapATAC2"):
    """SnapATAC2's spectral embedding of the binarized counts, when snapatac2 is installed.

    `snapatac2.tl.spectral` with cosine similarity and every peak a feature, at `n_comps=latent_dim` (it may return
    fewer components: it drops negative eigenvalues). A reference of compare.py (install with
    `pip install -e ".[reference]"`).

    Parameters
    ----------
    adata : AnnData
        Counts, cells x peaks, in `X` (or `layer`), in memory.
    latent_dim : int
        The components asked for.
    layer : str or None
        Read `adata.layers[layer]` instead of `X`.
    seed : int
        SnapATAC2's random_state.
    key_added : str
        Where the results go (below).

    Returns
    -------
    None

    Writes
    ------
    obsm["X_<key_added>"]
        (n_cells, n_components) float32, the spectral embedding.
    uns[key_added]
        method ('SnapATAC2'), params (latent_dim, seed), seconds (fit_s).

    Raises
    ------
    ImportError
        snapatac2 is not installed.
    """
    import anndata
    import snapatac2 as snap

    from .pp import binarize

    seed = SEED.check(seed)
    binary = anndata.AnnData(X=binarize(counts_of(adata, layer)))
    binary.var["selected"] = True
    started = time.perf_counter()
    snap.tl.spectral(binary, n_comps=latent_dim, features="selected", random_state=seed)
    adata.obsm[f"X_{key_added}"] = np.asarray(binary.obsm["X_spectral"], dtype=np.float32)
    adata.uns[key_added] = {"method": "SnapATAC2", "params": {"latent_dim": latent_dim, "seed": seed},
                            "seconds": {"fit_s": time.perf_counter() - started}}


FIT = {"AE": ae, "SparseAE": sparse_ae, "StackedAE": stacked_ae, "VAE": vae, "NMF": nmf, "LSNMF": lsnmf}


def cluster(adata, use_rep: str = "X_AE", *, labels_key: str | None = None, n_clusters: int | None = None,
            method: str = "kmeans", resolution: float | None = None, seed: int = 0, n_init: int = 10,
            neighbors_key: str | None = None, key_added: str = "cluster"):
    """Cluster `obsm[use_rep]` in the clustering space and score the clusters against the labels.

    The clustering space is the same for every method: each feature centred, each cell L2-normalized. Method 'kmeans':
    K-means with k = `n_clusters`, or the number of label types with `labels_key`, else 8. Method 'leiden': Leiden
    (igraph, modularity) on the 15-nearest-neighbour graph weighted as `scanpy.pp.neighbors` weighs it, at
    `resolution`, or with the resolution bisected until it gives `n_clusters` (or the number of label types) clusters,
    else at 1.0. Method 'spectral': K-means (k as above) on the leading eigenvectors of that graph, so that clusters
    follow neighbourhoods rather than global distances. The one-call step the scripts use; `neighbors`, `leiden`,
    `kmeans` and `score` are its steps one by one.

    Parameters
    ----------
    adata : AnnData
        With `obsm[use_rep]`, (n_cells, n_features).
    use_rep : str
        The representation to cluster.
    labels_key : str or None
        The obs column of the cell types to score against; None scores the silhouette only.
    n_clusters : int or None
        K of K-means and spectral clustering, the count Leiden's resolution is bisected to.
    method : {'kmeans', 'leiden', 'spectral'}
        The clustering.
    resolution : float or None
        Leiden's resolution; None bisects it (or takes 1.0 without labels and `n_clusters`).
    seed : int
        The clustering's random state.
    n_init : int
        K-means restarts.
    neighbors_key : str or None
        Leiden and spectral clustering cut the graph `neighbors` stored under this key (built on the same `use_rep`)
        instead of building their own, so that several clusterings of one representation search once.
    key_added : str
        Where the results go (below).

    Returns
    -------
    dict
        The scores: with labels ARI, NMI, F1 (macro) and accuracy after the optimal one-to-one matching of clusters to
        labels, and knn_purity (the share of each cell's 14 nearest neighbours that have its label); silhouette always;
        n_clusters, n_cells; and Leiden's resolution.

    Writes
    ------
    obs[key_added]
        Categorical cluster ids, as strings.
    uns[key_added]
        params (use_rep, labels_key, method, n_clusters, seed, and n_init or resolution), scores (as returned) and, with
        labels, confusion (a DataFrame, labels x clusters, clusters in matched order).

    Raises
    ------
    scatac.InputError
        No such `use_rep`, `labels_key` or graph, or an argument that breaks its rule.
    """
    import pandas as pd

    _check_rep(adata, use_rep)
    if labels_key is not None:
        _check_obs(adata, labels_key, "labels_key")
    n_clusters, seed, n_init = N_CLUSTERS.check(n_clusters), SEED.check(seed), N_INIT.check(n_init)
    method, resolution = CLUSTER.check(method), RESOLUTION.check(resolution)
    labels = adata.obs[labels_key].astype(str).to_numpy() if labels_key is not None else None
    connectivities = _stored_graph(adata, neighbors_key, use_rep) if neighbors_key is not None else None
    clusters, scores, confusion = evaluate(np.asarray(adata.obsm[use_rep]), labels, n_clusters, seed, n_init=n_init,
                                           method=method, resolution=resolution, connectivities=connectivities)
    adata.obs[key_added] = pd.Categorical([str(c) for c in clusters])
    record = {"params": {"use_rep": use_rep, "labels_key": labels_key, "method": method,
                         "n_clusters": scores["n_clusters"], "seed": seed,
                         **({"resolution": scores["resolution"]} if method == "leiden" else {"n_init": n_init})},
              "scores": scores}
    if confusion is not None:
        record["confusion"] = confusion.rename(columns=str)
    adata.uns[key_added] = _storable(record)
    return scores


def umap(adata, use_rep: str = "X_AE", *, seed: int = 0, key_added: str = "umap"):
    """A 2-D UMAP (umap-learn) of `obsm[use_rep]`, in the clustering space.

    Above `scatac.evaluate.UMAP_FIT_CELLS` cells, UMAP is fitted on a random sample of that many cells (seeded) and
    places the others with the fitted model's transform (one line on stderr says so). Reads only `obsm[use_rep]`, so a
    backed AnnData's matrix stays on disk.

    Parameters
    ----------
    adata : AnnData
        With `obsm[use_rep]`, (n_cells, n_features).
    use_rep : str
        The representation to lay out.
    seed : int
        UMAP's random_state, and the sample's.
    key_added : str
        Where the results go (below).

    Returns
    -------
    None

    Writes
    ------
    obsm["X_<key_added>"]
        (n_cells, 2) float32 coordinates.
    uns[key_added]
        params (use_rep, seed) and, when fitted on a sample, fitted_on (the cells in it).
    """
    from . import evaluate as evaluate_module

    _check_rep(adata, use_rep)
    seed = SEED.check(seed)
    adata.obsm[f"X_{key_added}"] = umap_coordinates(np.asarray(adata.obsm[use_rep]), seed)
    adata.uns[key_added] = {"params": {"use_rep": use_rep, "seed": seed}}
    if adata.n_obs > evaluate_module.UMAP_FIT_CELLS:
        adata.uns[key_added]["fitted_on"] = int(evaluate_module.UMAP_FIT_CELLS)


def _check_rep(adata, use_rep: str):
    if use_rep not in adata.obsm:
        fail("use_rep", f"adata has no obsm[{use_rep!r}] (obsm: {', '.join(adata.obsm) or 'none'})")


def _check_obs(adata, key: str, option: str):
    if key not in adata.obs:
        fail(option, f"adata has no obs column {key!r} (obs: {', '.join(adata.obs.columns) or 'none'})")


def _graph_keys(key_added: str) -> tuple:
    """scanpy's obsp keys of a neighbour graph: "distances" and "connectivities" under the default key."""
    if key_added == "neighbors":
        return "distances", "connectivities"
    return f"{key_added}_distances", f"{key_added}_connectivities"


def neighbors(adata, use_rep: str = "X_AE", *, n_neighbors: int = 15, seed: int = 0, key_added: str = "neighbors"):
    """The cells' nearest-neighbour graph in the clustering space of `obsm[use_rep]`, stored as scanpy stores its own.

    Exact neighbours, weighted by UMAP's fuzzy simplicial set as `scanpy.pp.neighbors` weighs them: the graph
    `leiden` and `cluster`'s Leiden and spectral clustering cut, and `scanpy.tl.leiden` reads.

    Parameters
    ----------
    adata : AnnData
        With `obsm[use_rep]`, (n_cells, n_features).
    use_rep : str
        The representation.
    n_neighbors : int
        Neighbours per cell, the cell itself counted (as scanpy counts them); at least 2.
    seed : int
        The fuzzy simplicial set's random state.
    key_added : str
        Where the results go (below).

    Returns
    -------
    None

    Writes
    ------
    obsp["distances"], obsp["connectivities"]
        CSR (n_cells, n_cells) float32: each cell's nearest other cells with their distance, and the symmetric weights
        in [0, 1] ("<key_added>_distances" and "<key_added>_connectivities" under another `key_added`).
    uns[key_added]
        distances_key, connectivities_key and params (n_neighbors, method, metric, use_rep, random_state): scanpy's
        layout, read through `uns[neighbors_key]["connectivities_key"]`.
    """
    from .evaluate import cluster_space, neighbors as neighbor_matrices

    _check_rep(adata, use_rep)
    seed = SEED.check(seed)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 2:
        fail("n_neighbors", f"must be an integer >= 2 (the cell itself counted, as scanpy), got {n_neighbors!r}")
    distances, connectivities = neighbor_matrices(cluster_space(np.asarray(adata.obsm[use_rep])), int(n_neighbors), seed)
    distances_key, connectivities_key = _graph_keys(key_added)
    adata.obsp[distances_key], adata.obsp[connectivities_key] = distances, connectivities
    adata.uns[key_added] = {"distances_key": distances_key, "connectivities_key": connectivities_key,
                            "params": {"n_neighbors": int(n_neighbors), "method": "umap", "metric": "euclidean",
                                       "use_rep": use_rep, "random_state": seed}}


def kmeans(adata, use_rep: str = "X_AE", n_clusters: int = 8, *, seed: int = 0, n_init: int = 10,
           key_added: str = "kmeans"):
    """K-means of `obsm[use_rep]` in the clustering space (each feature centred, each cell L2-normalized).

    The clustering every method is scored with by default.

    Parameters
    ----------
    adata : AnnData
        With `obsm[use_rep]`, (n_cells, n_features).
    use_rep : str
        The representation to cluster.
    n_clusters : int
        K.
    seed : int
        K-means' random state.
    n_init : int
        Restarts.
    key_added : str
        Where the results go (below).

    Returns
    -------
    None

    Writes
    ------
    obs[key_added]
        Categorical cluster ids, as strings.
    uns[key_added]
        params (use_rep, n_clusters asked, seed, n_init, and n_clusters found).
    """
    from .evaluate import cluster_space, kmeans as fit_kmeans

    _check_rep(adata, use_rep)
    n_clusters, seed, n_init = N_CLUSTERS.check(n_clusters), SEED.check(seed), N_INIT.check(n_init)
    clusters = fit_kmeans(cluster_space(np.asarray(adata.obsm[use_rep])), n_clusters, seed, n_init=n_init)
    _write_clusters(adata, clusters, key_added, {"use_rep": use_rep, "n_clusters": n_clusters, "seed": seed,
                                                 "n_init": n_init})


def _stored_graph(adata, neighbors_key: str, use_rep: str | None = None):
    """The connectivities (CSR) tl.neighbors or scanpy stored under `neighbors_key`, checked to be of `use_rep`."""
    record = adata.uns.get(neighbors_key)
    key = record.get("connectivities_key") if isinstance(record, dict) else None
    if key is None or key not in adata.obsp:
        fail("neighbors_key", f"adata has no neighbour graph under {neighbors_key!r}: run scatac.tl.neighbors first")
    built_on = record.get("params", {}).get("use_rep")
    if use_rep is not None and built_on is not None and built_on != use_rep:
        fail("neighbors_key", f"the graph under {neighbors_key!r} was built on {built_on!r}, not on {use_rep!r}")
    return sp.csr_matrix(adata.obsp[key])


def leiden(adata, resolution: float | None = 1.0, *, n_clusters: int | None = None, neighbors_key: str = "neighbors",
           seed: int = 0, key_added: str = "leiden"):
    """Leiden (igraph, modularity) on the graph `neighbors` (or `scanpy.pp.neighbors`) stored under `neighbors_key`.

    At `resolution`; or, with `n_clusters` and `resolution=None`, the resolution bisected until Leiden gives that many
    clusters (the protocol of Chen et al. 2019's benchmark of scATAC-seq methods).

    Parameters
    ----------
    adata : AnnData
        With a neighbour graph under `uns[neighbors_key]`.
    resolution : float or None
        Leiden's resolution; None bisects it to `n_clusters`.
    n_clusters : int or None
        The number of clusters to bisect the resolution to.
    neighbors_key : str
        Where `neighbors` stored the graph.
    seed : int
        Leiden's random state.
    key_added : str
        Where the results go (below).

    Returns
    -------
    None

    Writes
    ------
    obs[key_added]
        Categorical cluster ids, as strings.
    uns[key_added]
        params (neighbors_key, resolution used, seed, n_clusters found).

    Raises
    ------
    scatac.InputError
        No graph under `neighbors_key`, or neither `resolution` nor `n_clusters`.
    """
    from .evaluate import as_igraph, leiden as fit_leiden

    connectivities = _stored_graph(adata, neighbors_key)
    n_clusters, seed, resolution = N_CLUSTERS.check(n_clusters), SEED.check(seed), RESOLUTION.check(resolution)
    if resolution is None and n_clusters is None:
        fail("resolution", "give a resolution, or n_clusters to bisect the resolution to")
    clusters, used = fit_leiden(None, n_clusters if resolution is None else None, seed, resolution,
                                graph=as_igraph(connectivities))
    _write_clusters(adata, clusters, key_added, {"neighbors_key": neighbors_key, "resolution": float(used),
                                                 "seed": seed})


def _write_clusters(adata, clusters, key_added: str, params: dict):
    import pandas as pd

    adata.obs[key_added] = pd.Categorical([str(c) for c in clusters])
    adata.uns[key_added] = _storable({"params": {**params, "n_clusters": int(len(np.unique(clusters)))}})


def score(adata, cluster_key: str, labels_key: str = "label", *, use_rep: str | None = None, seed: int = 0) -> dict:
    """Score any clustering in `obs[cluster_key]` against the labels in `obs[labels_key]`.

    This package's clusters, scanpy's Leiden, or a clustering of your own: any obs column. Nothing is written: as
    scikit-learn's metrics, the scores are returned to the caller.

    Parameters
    ----------
    adata : AnnData
        With both obs columns (and `obsm[use_rep]` when given).
    cluster_key : str
        The obs column of the clusters (any labels: they are compared as strings).
    labels_key : str
        The obs column of the cell types.
    use_rep : str or None
        A representation whose clustering space the silhouette and the neighbours' label purity are taken in.
    seed : int
        The silhouette's sample (at most 10,000 cells).

    Returns
    -------
    dict
        ARI, NMI, F1 (macro) and accuracy after the optimal one-to-one matching of clusters to labels, n_clusters,
        and with `use_rep` the silhouette of the clusters and knn_purity (the share of each cell's 14 nearest
        neighbours that have its label).

    Raises
    ------
    scatac.InputError
        No such obs column or representation.
    """
    from .evaluate import cluster_space, knn_purity, score_clusters

    _check_obs(adata, cluster_key, "cluster_key")
    _check_obs(adata, labels_key, "labels_key")
    seed = SEED.check(seed)
    labels = adata.obs[labels_key].astype(str).to_numpy()
    clusters = adata.obs[cluster_key].astype(str).to_numpy()
    # score_clusters reads cluster ids as integers: number the clusters in order of first appearance
    _, ids = np.unique(clusters, return_inverse=True)
    if use_rep is None:
        scores = score_clusters(np.zeros((len(ids), 1), dtype=np.float32), ids, labels, seed)
        scores.pop("silhouette", None)
    else:
        _check_rep(adata, use_rep)
        features = cluster_space(np.asarray(adata.obsm[use_rep]))
        scores = score_clusters(features, ids, labels, seed)
        scores["knn_purity"] = knn_purity(features, labels)
    scores["n_clusters"] = int(len(np.unique(ids)))
    return scores


__all__ = ["ae", "sparse_ae", "stacked_ae", "vae", "nmf", "lsnmf", "lsi", "spectral", "neighbors", "kmeans", "leiden",
           "cluster", "score", "umap", "counts_of"]
