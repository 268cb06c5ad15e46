"""Leiden next to K-means (issue 15): the neighbour graph as scanpy builds it, the resolution bisected to the number of
label types (Chen et al. 2019's protocol), the same seed the same partition, and --cluster in the scripts."""
import numpy as np
import pytest

import scatac
from conftest import DEMO, run_script
from scatac.evaluate import cluster_space, evaluate, leiden, neighbor_graph


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
    done = run_script("AE.py", 3, DEMO, tmp_path / "out", 4, DEMO / "labels.txt", "--cluster", "leiden",
                      "--no-umap", "--threads", "1", "--hidden-dims", "32")
    assert done.returncode == 0, done.stderr
    scores = dict(line.split("\t") for line in (tmp_path / "out" / "scores.tsv").read_text().splitlines()[1:])
    assert int(float(scores["n_clusters"])) == 6 and float(scores["resolution"]) > 0
    rows = [line.split("\t") for line in (tmp_path / "out" / "cluster_assignments.txt").read_text().splitlines()[1:]]
    assert len({row[1] for row in rows}) == 6


@pytest.mark.parametrize("flags, words", [(["--cluster", "louvain"], "--cluster"),
                                          (["--cluster", "leiden", "--resolution", "0"], "--resolution")])
def test_bad_clustering_options_are_one_line(tmp_path, flags, words):
    done = run_script("AE.py", 3, DEMO, tmp_path / "out", 4, *flags)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
