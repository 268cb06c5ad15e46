"""Leiden next to K-means (issue 15): the neighbour graph as scanpy builds it, the resolution bisected to the number of
label types (Chen et al. 2019's protocol), the same seed the same partition, and --cluster in the scripts; spectral
clustering on the same graph and the neighbours' label purity (issue 20)."""
import numpy as np
import pytest

import scatac
from conftest import DEMO, run_in_process
from scatac.evaluate import cluster_space, evaluate, kmeans, knn_purity, leiden, neighbor_graph, spectral


@pytest.fixture(scope="module")
def demo_lsi():
    adata = scatac.read(DEMO, labels=DEMO / "labels.txt", verbose=False)
    scatac.pp.filter(adata, verbose=False)
    scatac.tl.lsi(adata, 10)
    return adata


def test_the_neighbour_graph_is_symmetric_weighted_and_local(demo_lsi):
    features = cluster_space(demo_lsi.obsm["X_LSI"])
    graph = neighbor_graph(features)
    assert graph.vcount() == demo_lsi.n_obs and not graph.is_directed()
    weights = np.array(graph.es["weight"])
    assert np.all((weights > 0) & (weights <= 1))
    degrees = np.array(graph.degree())
    assert degrees.min() >= 1 and np.median(degrees) <= 2 * 15  # k = 15 each way, at most


def test_leiden_is_bisected_to_the_label_types_and_finds_them(demo_lsi):
    labels = demo_lsi.obs["label"].astype(str).to_numpy()
    clusters, scores, confusion = evaluate(demo_lsi.obsm["X_LSI"], labels, None, seed=0, method="leiden")
    assert len(np.unique(clusters)) == len(set(labels)) == scores["n_clusters"]
    assert 0 < scores["resolution"] < 100
    assert scores["ARI"] > 0.5  # the demo's simulated types are well apart in LSI
    assert confusion.shape == (len(set(labels)), len(set(labels)))


def test_the_same_seed_gives_the_same_partition(demo_lsi):
    features = cluster_space(demo_lsi.obsm["X_LSI"])
    first, resolution = leiden(features, 6, seed=3)
    second, again = leiden(features, 6, seed=3)
    assert resolution == again and np.array_equal(first, second)


def test_the_resolution_range_widens_when_its_top_gives_too_few_clusters(demo_lsi):
    features = cluster_space(demo_lsi.obsm["X_LSI"])
    at_top, _ = leiden(features, None, seed=0, resolution=3.0)
    wanted = 2 * len(np.unique(at_top))  # more than resolution 3 gives
    clusters, resolution = leiden(features, wanted, seed=0)
    assert resolution > 3.0 and abs(len(np.unique(clusters)) - wanted) <= 2


def test_without_labels_leiden_runs_at_its_resolution(demo_lsi):
    scores = scatac.tl.cluster(demo_lsi, use_rep="X_LSI", method="leiden", key_added="leiden")
    assert scores["resolution"] == 1.0 and "ARI" not in scores
    assert demo_lsi.uns["leiden"]["params"]["method"] == "leiden"
    higher = scatac.tl.cluster(demo_lsi, use_rep="X_LSI", method="leiden", resolution=3.0, key_added="fine")
    assert higher["n_clusters"] >= scores["n_clusters"]


def test_a_script_clusters_with_leiden(tmp_path):
    done = run_in_process("AE.py", 3, DEMO, tmp_path / "out", 4, DEMO / "labels.txt", "--cluster", "leiden",
                          "--no-umap", "--threads", "1", "--hidden-dims", "32")
    assert done.returncode == 0, done.stderr
    scores = dict(line.split("\t") for line in (tmp_path / "out" / "scores.tsv").read_text().splitlines()[1:])
    assert int(float(scores["n_clusters"])) == 6 and float(scores["resolution"]) > 0
    rows = [line.split("\t") for line in (tmp_path / "out" / "cluster_assignments.txt").read_text().splitlines()[1:]]
    assert len({row[1] for row in rows}) == 6


@pytest.mark.parametrize("flags, words", [(["--cluster", "louvain"], "--cluster"),
                                          (["--cluster", "leiden", "--resolution", "0"], "--resolution")])
def test_bad_clustering_options_are_one_line(tmp_path, flags, words):
    done = run_in_process("AE.py", 3, DEMO, tmp_path / "out", 4, *flags)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def long_type_beside_a_small_one(seed=0):
    """Three types in 3-D: 400 cells strung along a line 8 wide, 200 in a ball, and 20 in a ball 6 from those.
    K-means with k = 3 cuts the line in two (that lowers its sum of squares more than setting the 20 apart), as it
    cut cerebellum801's astrocytes; the neighbour graph has the three types as its three components."""
    rng = np.random.default_rng(seed)
    line = np.column_stack([rng.uniform(-4, 4, 400), np.zeros(400), np.zeros(400)])
    ball = np.column_stack([rng.normal(0, 0.3, 200), np.full(200, 10.0), np.zeros(200)])
    small = np.column_stack([rng.normal(0, 0.3, 20), np.full(20, 10.0), np.full(20, 6.0)])
    features = np.vstack([line, ball, small]) + rng.normal(0, 0.1, (620, 3))
    return features.astype(np.float32), np.repeat(["long", "ball", "small"], [400, 200, 20])


def test_spectral_clustering_follows_the_graph_where_kmeans_cuts_a_long_type():
    from sklearn.metrics import adjusted_rand_score

    features, labels = long_type_beside_a_small_one()
    assert adjusted_rand_score(labels, kmeans(features, 3, 0)) < 0.8
    clusters = spectral(features, 3, seed=0)
    assert adjusted_rand_score(labels, clusters) > 0.99
    np.testing.assert_array_equal(clusters, spectral(features, 3, seed=0))  # the same seed, the same partition


def test_knn_purity_is_one_for_apart_types_and_chance_for_shuffled_labels():
    features, labels = long_type_beside_a_small_one()
    assert knn_purity(features, labels) == 1.0
    shuffled = np.random.default_rng(1).permutation(labels)
    chance = sum((shuffled == t).mean() ** 2 for t in set(labels))
    assert abs(knn_purity(features, shuffled) - chance) < 0.05


def test_spectral_through_tl_cluster_scores_and_records_it(demo_lsi):
    scores = scatac.tl.cluster(demo_lsi, use_rep="X_LSI", labels_key="label", method="spectral", key_added="spectral")
    assert scores["n_clusters"] == 6 and scores["ARI"] > 0.5
    assert 0.5 < scores["knn_purity"] <= 1  # the demo's types are apart in LSI; chance is about 1/6
    assert demo_lsi.uns["spectral"]["params"]["method"] == "spectral"
    assert demo_lsi.obs["spectral"].nunique() == 6
