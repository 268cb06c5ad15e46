"""The rest of a run at atlas size: NMF (MiniBatchNMF over the store's blocks), LSI (a randomized SVD over them)
and LSNMF (its sparse solver, each product a pass over the blocks) from an AnnData backed by an on-disk store, UMAP
fitted on a sample with the other cells placed, and clustering that reads only obsm. Each on a small simulated store
cut into several blocks."""
import contextlib

import numpy as np
import pytest

import scatac
from scatac import evaluate, factorization, tl
from scatac.errors import InputError
from scatac.io.store import StoredCounts
from scatac.simulate import simulate_store

anndata = pytest.importorskip("anndata")

N_CELLS, N_PEAKS, N_TYPES = 1500, 800, 4
BLOCK_CELLS = 256  # six blocks, the last one short
INIT_CELLS = 500  # NMF's start sample, below the store's cells so that it is a sample


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "cells.h5ad"
    simulate_store(path, N_CELLS, N_PEAKS, 0.03, n_types=N_TYPES, seed=1, progress=False)
    return path


@pytest.fixture(scope="module")
def whole(store):
    """The same store read into memory: the reference every streamed fit is compared with. Tests copy it."""
    return anndata.read_h5ad(store)


@pytest.fixture
def backed(store, monkeypatch):
    """The store opened backed; the streamed fits cut it into BLOCK_CELLS-cell blocks. Closed afterwards."""
    monkeypatch.setattr(tl, "STORE_BLOCK_CELLS", BLOCK_CELLS)
    monkeypatch.setattr(factorization, "STORE_NMF_INIT_CELLS", INIT_CELLS)
    adata = anndata.read_h5ad(store, backed="r")
    yield adata
    adata.file.close()


@contextlib.contextmanager
def streamed_only():
    """Within: reading any AnnData's X fails, and every read of a store is at most one block's rows (NMF's start
    sample aside), so that what runs must read the store a block at a time. Yields the rows each read asked for."""
    sizes = []
    read_rows, read_cells = StoredCounts.read_rows, StoredCounts.read_cells

    def rows(self, start, stop):
        sizes.append(min(stop, self.n_cells) - start)
        assert sizes[-1] <= BLOCK_CELLS, f"read {sizes[-1]} rows at once"
        return read_rows(self, start, stop)

    def cells(self, wanted):
        sizes.append(len(wanted))
        assert sizes[-1] <= INIT_CELLS, f"read {sizes[-1]} cells at once"
        return read_cells(self, wanted)

    def refuse(self):
        raise AssertionError("adata.X was read")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StoredCounts, "read_rows", rows)
        patch.setattr(StoredCounts, "read_cells", cells)
        patch.setattr(anndata.AnnData, "X", property(refuse, anndata.AnnData.X.fset))
        yield sizes


def ari(adata, use_rep: str) -> float:
    return scatac.tl.cluster(adata, use_rep=use_rep, labels_key="label")["ARI"]


def test_nmf_from_a_store_reads_blocks_and_clusters_as_in_memory(backed, whole):
    with streamed_only() as reads:
        scatac.tl.nmf(backed, 5, progress=False)
    W = backed.obsm["X_NMF"]
    assert W.shape == (N_CELLS, 5) and W.dtype == np.float32 and np.isfinite(W).all() and (W >= 0).all()
    assert backed.varm["NMF_loadings"].shape == (N_PEAKS, 5)
    record = backed.uns["NMF"]
    assert record["streamed"] is True and record["params"]["transform"] == "idf"
    # the graph term needs every cell's neighbours at hand: off from a store, and recorded so
    assert record["params"]["graph_weight"] == 0 and record["factorization"]["graph_lambda"] == 0
    details = record["factorization"]
    assert details["streamed"] and details["backend"] == "minibatch" and details["init_cells"] == INIT_CELLS
    assert 1 <= details["n_iter"] <= 400 and np.isfinite(details["reconstruction_err"])
    # the statistics pass, at least one pass of fitting and the factors' pass, each read in blocks
    assert sum(reads) >= INIT_CELLS + 3 * N_CELLS
    streamed = ari(backed, "X_NMF")
    adata = whole.copy()
    scatac.tl.nmf(adata, 5)
    in_memory = ari(adata, "X_NMF")
    assert streamed > 0.8, (streamed, in_memory)  # four simulated types; chance is 0
    assert streamed > in_memory - 0.1, (streamed, in_memory)


def test_nmf_from_a_store_takes_its_options_and_refuses_what_needs_memory(backed):
    """The input transform is the option's (weights from every cell); full NMF and solver cd need the matrix whole."""
    scatac.tl.nmf(backed, 3, transform="binary", max_iter=2, progress=False, key_added="binary")
    assert backed.obsm["X_binary"].shape == (N_CELLS, 3)
    details = backed.uns["binary"]["factorization"]
    assert details["transform"] == "binary" and details["n_iter"] <= 2
    with pytest.raises(InputError, match="backend"):
        scatac.tl.nmf(backed, 3, backend="full", progress=False)
    with pytest.raises(InputError, match="solver"):
        scatac.tl.nmf(backed, 3, solver="cd", progress=False)
    with pytest.raises(InputError, match="layer"):
        scatac.tl.nmf(backed, 3, layer="counts", progress=False)
    with pytest.raises(InputError, match="view"):
        scatac.tl.nmf(backed[:100], 3, progress=False)


@pytest.mark.parametrize("transform", ["tfidf", "idf"])
def test_lsi_from_a_store_agrees_with_lsi_in_memory_per_component(store, whole, transform):
    """The randomized SVD over blocks finds the in-memory TruncatedSVD's components, each up to sign.

    The components past the first (dropped) that the N_TYPES types span: further ones are noise whose singular values
    nearly tie, which no randomized SVD resolves one by one (neither matches the exact SVD's there).
    """
    k = N_TYPES - 1
    streamed = factorization.lsi_stored(store, k, seed=0, transform=transform, block_cells=BLOCK_CELLS)
    in_memory = factorization.lsi(whole.X, k, seed=0, transform=transform)
    assert streamed.shape == in_memory.shape == (N_CELLS, k) and streamed.dtype == np.float32
    assert np.isfinite(streamed).all()
    correlations = [abs(np.corrcoef(streamed[:, j], in_memory[:, j])[0, 1]) for j in range(k)]
    assert min(correlations) > 0.99, correlations
    # unit variance, as Signac's RunSVD; otherwise the same scores weighted by their singular values
    assert np.allclose(streamed.std(axis=0), 1, atol=1e-3)
    weighted = factorization.lsi_stored(store, k, transform=transform, unit_variance=False, block_cells=BLOCK_CELLS)
    assert np.allclose(weighted / weighted.std(axis=0), streamed, atol=1e-4)
    assert not np.allclose(weighted.std(axis=0), 1, atol=0.1)


def test_lsi_of_a_backed_anndata_clusters_as_in_memory(backed, whole):
    with streamed_only():
        scatac.tl.lsi(backed, 4, progress=False)
    features = backed.obsm["X_LSI"]
    assert features.shape == (N_CELLS, 4) and np.isfinite(features).all()
    assert backed.uns["LSI"]["streamed"] is True and backed.uns["LSI"]["params"]["transform"] == "tfidf"
    adata = whole.copy()
    scatac.tl.lsi(adata, 4)
    streamed, in_memory = ari(backed, "X_LSI"), ari(adata, "X_LSI")
    assert streamed > 0.8 and abs(streamed - in_memory) < 0.02, (streamed, in_memory)


def test_lsnmf_from_a_store_runs_the_in_memory_solvers_iterations(store, whole):
    """The sparse solver with its two products taken a pass each: the in-memory factors, up to the order of sums."""
    W, H, details = factorization.fit_lsnmf_stored(store, 4, seed=2, max_iter=8, block_cells=BLOCK_CELLS)
    # a store's LSNMF has no graph term (it needs every cell's neighbours at hand)
    W_memory, H_memory, memory = factorization.fit_lsnmf(whole.X, 4, seed=2, max_iter=8, backend="sparse",
                                                         graph_weight=0)
    assert W.shape == (N_CELLS, 4) and H.shape == (4, N_PEAKS) and W.dtype == H.dtype == np.float32
    assert details["streamed"] and details["n_iter"] == memory["n_iter"] == 8
    # the weights, the start, the first two gradients, two per iteration, the error
    assert details["passes"] == 1 + 1 + 2 + 2 * 8 + 1
    np.testing.assert_allclose(W, W_memory, rtol=1e-3, atol=1e-4 * np.abs(W_memory).max())
    np.testing.assert_allclose(H, H_memory, rtol=1e-3, atol=1e-4 * np.abs(H_memory).max())
    assert details["reconstruction_err"] == pytest.approx(memory["reconstruction_err"], rel=1e-4)


def test_lsnmf_of_a_backed_anndata_clusters_as_in_memory(backed, whole):
    with streamed_only():
        scatac.tl.lsnmf(backed, 4, max_iter=10, progress=False)
    features = backed.obsm["X_LSNMF"]
    assert features.shape == (N_CELLS, 4) and np.isfinite(features).all()
    assert backed.varm["LSNMF_loadings"].shape == (N_PEAKS, 4) and backed.uns["LSNMF"]["streamed"] is True
    adata = whole.copy()
    # nimfa on the dense copy: the same algorithm from the same start (a store's has no graph term)
    scatac.tl.lsnmf(adata, 4, max_iter=10, graph_weight=0)
    streamed, in_memory = ari(backed, "X_LSNMF"), ari(adata, "X_LSNMF")
    assert streamed > 0.8 and abs(streamed - in_memory) < 0.02, (streamed, in_memory)
    with pytest.raises(InputError, match="backend: nimfa factorizes a dense copy"):
        scatac.tl.lsnmf(backed, 4, backend="nimfa", progress=False)


def separated_groups(n_cells=1500, n_groups=4, seed=0):
    """Features of well separated groups (n_cells, 6) and each cell's group."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(n_groups, size=n_cells)
    centres = rng.normal(scale=4.0, size=(n_groups, 6))
    return (centres[groups] + rng.normal(size=(n_cells, 6))).astype(np.float32), groups


def test_umap_above_the_limit_fits_a_sample_and_places_the_rest(backed, monkeypatch, capsys):
    """Above UMAP_FIT_CELLS: fitted on a seeded sample, the other cells placed by transform near their own group."""
    monkeypatch.setattr(evaluate, "UMAP_FIT_CELLS", 300)
    monkeypatch.setattr(evaluate, "UMAP_TRANSFORM_CHUNK", 500)  # three chunks of placed cells
    features, groups = separated_groups()
    backed.obsm["X_feat"] = features
    with streamed_only():
        scatac.tl.umap(backed, use_rep="X_feat")
    coordinates = backed.obsm["X_umap"]
    assert coordinates.shape == (N_CELLS, 2) and coordinates.dtype == np.float32 and np.isfinite(coordinates).all()
    assert backed.uns["umap"]["fitted_on"] == 300
    assert "fitted on a random sample of 300 of the 1,500 cells" in capsys.readouterr().err
    # each cell's nearest other cell in the layout is of its own group: the placed cells landed among their group
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=2).fit(coordinates).kneighbors(coordinates, return_distance=False)[:, 1]
    assert (groups[nearest] == groups).mean() > 0.95


def test_umap_at_or_below_the_limit_fits_every_cell(monkeypatch):
    def refuse(*args):
        raise AssertionError("sampled below the limit")

    features, _ = separated_groups(n_cells=200)
    monkeypatch.setattr(evaluate, "UMAP_FIT_CELLS", 200)
    monkeypatch.setattr(evaluate, "_sampled_umap_coordinates", refuse)
    coordinates = evaluate.umap_coordinates(features, 0)
    assert coordinates.shape == (200, 2) and np.isfinite(coordinates).all()


def test_clustering_a_backed_anndata_reads_only_obsm(backed, monkeypatch):
    """tl.cluster, kmeans, neighbors, leiden and score on a backed AnnData with features in obsm never read X; above
    MINIBATCH_KMEANS_ABOVE cells K-means is MiniBatchKMeans and still finds the groups."""
    from sklearn.cluster import MiniBatchKMeans

    features, groups = separated_groups()
    backed.obsm["X_feat"] = features
    backed.obs["group"] = groups.astype(str)
    monkeypatch.setattr(evaluate, "MINIBATCH_KMEANS_ABOVE", 1000)
    monkeypatch.setattr(evaluate, "SILHOUETTE_SAMPLE", 400)
    fitted = []
    original = MiniBatchKMeans.fit_predict

    def recorded(self, *args, **kwargs):
        fitted.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MiniBatchKMeans, "fit_predict", recorded)
    with streamed_only() as reads:
        scores = scatac.tl.cluster(backed, use_rep="X_feat", labels_key="group")
        scatac.tl.kmeans(backed, use_rep="X_feat", n_clusters=4)
        scatac.tl.neighbors(backed, use_rep="X_feat")
        scatac.tl.leiden(backed, None, n_clusters=4)
        matched = scatac.tl.score(backed, "kmeans", "group", use_rep="X_feat")
    assert reads == []  # not one read of the store
    assert fitted == ["MiniBatchKMeans", "MiniBatchKMeans"]
    assert scores["ARI"] > 0.95 and matched["ARI"] > 0.95 and np.isfinite(scores["silhouette"])
    assert backed.obs["cluster"].nunique() == 4 and backed.obs["leiden"].nunique() == 4
