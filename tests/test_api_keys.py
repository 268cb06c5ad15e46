"""One API convention: every tl function puts its result where the key rule says (obsm["X_<key>"], obs[key], obsp as
scanpy's, uns[key]), the neighbour graph is scanpy's own format, and any obs column can be scored against labels."""
import numpy as np
import pytest
import scipy.sparse as sp

import scatac
from conftest import cpu_trainer


@pytest.fixture(scope="module")
def fitted(demo_adata):
    adata = demo_adata.copy()
    scatac.tl.ae(adata, 4, epochs=2, hidden_dims=(32,), trainer=cpu_trainer(), key_added="code")
    return adata


def test_every_representation_lands_in_obsm_x_key_with_its_record(fitted):
    adata = fitted.copy()
    scatac.tl.nmf(adata, 4, max_iter=20, key_added="factors")
    scatac.tl.lsnmf(adata, 4, max_iter=5, key_added="ls")
    scatac.tl.lsi(adata, 4, key_added="svd")
    scatac.tl.umap(adata, use_rep="X_code", key_added="picture")
    for key, width in (("code", 4), ("factors", 4), ("ls", 4), ("svd", 4), ("picture", 2)):
        assert adata.obsm[f"X_{key}"].shape == (adata.n_obs, width), key
        assert "params" in adata.uns[key], key
    for key in ("code", "factors", "ls", "svd"):  # one name for the number of dimensions
        assert adata.uns[key]["params"]["latent_dim"] == 4, key


def test_clusterings_land_in_obs_and_the_graph_in_obsp_as_scanpy_keeps_it(fitted):
    adata = fitted.copy()
    scatac.tl.neighbors(adata, use_rep="X_code")
    record = adata.uns["neighbors"]
    assert (record["connectivities_key"], record["distances_key"]) == ("connectivities", "distances")
    connectivities, distances = adata.obsp["connectivities"], adata.obsp["distances"]
    assert sp.issparse(connectivities) and abs(connectivities - connectivities.T).max() < 1e-6
    assert (distances.getnnz(axis=1) == 14).all() and distances.diagonal().sum() == 0  # 15 with the cell itself
    scatac.tl.neighbors(adata, use_rep="X_code", n_neighbors=5, key_added="near")
    assert adata.obsp["near_distances"].getnnz(axis=1).max() == 4 and "near_connectivities" in adata.obsp
    scatac.tl.leiden(adata, resolution=0.5, key_added="communities")
    scatac.tl.leiden(adata, None, n_clusters=5, neighbors_key="near")
    scatac.tl.kmeans(adata, "X_code", 5, key_added="km")
    assert adata.obs["km"].nunique() == 5 and adata.uns["km"]["params"]["n_clusters"] == 5
    assert adata.obs["communities"].nunique() >= 2 and adata.uns["communities"]["params"]["resolution"] == 0.5
    assert adata.obs["leiden"].nunique() == 5
    scores = scatac.tl.cluster(adata, use_rep="X_code", labels_key="label", key_added="both")
    assert "both" in adata.obs and adata.uns["both"]["scores"]["ARI"] == scores["ARI"]


def test_leiden_without_a_graph_is_an_input_error(fitted):
    with pytest.raises(scatac.InputError, match="neighbors_key: .*run scatac.tl.neighbors first"):
        scatac.tl.leiden(fitted.copy())


def test_any_obs_column_is_scored_against_the_labels(fitted):
    adata = fitted.copy()
    adata.obs["same"] = adata.obs["label"].astype(str)
    perfect = scatac.tl.score(adata, "same", "label")
    assert perfect["ARI"] == pytest.approx(1.0) and perfect["F1"] == pytest.approx(1.0)
    assert "silhouette" not in perfect
    adata.obs["shuffled"] = np.random.default_rng(0).permutation(adata.obs["same"].to_numpy())
    noise = scatac.tl.score(adata, "shuffled", "label", use_rep="X_code")
    assert abs(noise["ARI"]) < 0.05 and -1 <= noise["silhouette"] <= 1 and 0 < noise["knn_purity"] <= 1
    with pytest.raises(scatac.InputError, match="cluster_key: adata has no obs column 'missing'"):
        scatac.tl.score(adata, "missing", "label")


def test_a_precomputed_graph_clusters_as_the_features_do(fitted):
    from scatac.evaluate import as_igraph, cluster_space, leiden, neighbors, spectral

    features = cluster_space(fitted.obsm["X_code"])
    _, connectivities = neighbors(features)
    np.testing.assert_array_equal(spectral(features, 5), spectral(None, 5, connectivities=connectivities))
    np.testing.assert_array_equal(leiden(features, 5)[0], leiden(None, 5, graph=as_igraph(connectivities))[0])


def test_cluster_reuses_a_stored_graph_of_the_same_representation_only(fitted):
    adata = fitted.copy()
    built = scatac.tl.cluster(adata, use_rep="X_code", labels_key="label", method="spectral", key_added="own")
    scatac.tl.neighbors(adata, use_rep="X_code")
    reused = scatac.tl.cluster(adata, use_rep="X_code", labels_key="label", method="spectral",
                               neighbors_key="neighbors", key_added="reused")
    assert reused["ARI"] == built["ARI"] and (adata.obs["own"] == adata.obs["reused"]).all()
    scatac.tl.umap(adata, use_rep="X_code")
    with pytest.raises(scatac.InputError, match="built on 'X_code', not on 'X_umap'"):
        scatac.tl.cluster(adata, use_rep="X_umap", method="leiden", neighbors_key="neighbors")
