"""compare.py (issue 6): one table row per method plus LSI at two settings, K-means and Leiden scores, figures that open, a failing method becomes a row,
label-free runs report agreement, the same seeds give the same scores, unknown methods are one error line."""
import math

import numpy as np
import pytest

import compare
from conftest import DEMO, run_script

SMALL = ["--ae-epochs", "3", "--sparseae-epochs", "3", "--stackedae-epochs", "1", "3", "--vae-epochs", "3",
         "--nmf-max-iter", "50", "--lsnmf-max-iter", "10", "--no-snapatac2", "--threads", "1"]
LATENT = 4


def table(outdir):
    lines = [line.split("\t") for line in (outdir / "comparison.tsv").read_text().splitlines()]
    return {row[0]: dict(zip(lines[0], row)) for row in lines[1:]}


def number(text):
    return float(text)  # "nan" parses to nan


def in_range(value, low, high):
    return low <= value <= high


@pytest.fixture(scope="module")
def all_methods(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "all"
    compare.main([str(DEMO), str(out), str(LATENT), str(DEMO / "labels.txt"), "--seeds", "2", *SMALL])
    return out


def test_every_method_has_a_row_and_outputs(all_methods):
    import matplotlib.image

    rows = table(all_methods)
    assert list(rows) == [*compare.METHODS, "LSI", "LSI_Signac", "LSI_US", "LSI_idf"]
    for method, row in rows.items():
        assert row["status"] == "ok", (method, row["status"])
        assert int(row["n_seeds"]) == 2
        assert in_range(number(row["ARI_mean"]), -1, 1)
        assert in_range(number(row["NMI_mean"]), 0, 1)
        assert in_range(number(row["F1_mean"]), 0, 1)
        assert in_range(number(row["silhouette_mean"]), -1, 1)
        assert number(row["ARI_std"]) >= 0
        assert in_range(number(row["ARI_leiden_mean"]), -1, 1) and in_range(number(row["NMI_leiden_mean"]), 0, 1)
        assert in_range(number(row["ARI_spectral_mean"]), -1, 1) and in_range(number(row["knn_purity_mean"]), 0, 1)
        assert number(row["train_s"]) >= 0
        folder = all_methods / method
        assert (folder / "feature.txt").exists() and (folder / "scores.tsv").exists()
        header = (folder / "feature.txt").read_text().splitlines()[0].split("\t")
        size = compare.OWN_SIZE.get(method, LATENT)  # Signac's LSI at its own defaults: dimensions 2-30
        assert header == ["barcode", *[f"{method}_{i}" for i in range(1, size + 1)]]
    # LSI separates the demo's simulated types well, with either clustering; a broken scorer or a label mix-up would not
    for reference in ("LSI", "LSI_Signac", "LSI_US", "LSI_idf"):
        assert number(rows[reference]["ARI_mean"]) > 0.5 and number(rows[reference]["ARI_leiden_mean"]) > 0.5
        assert number(rows[reference]["ARI_spectral_mean"]) > 0.5 and number(rows[reference]["knn_purity_mean"]) > 0.5
    for name in ("comparison.png", "umap_grid.png"):
        image = matplotlib.image.imread(all_methods / name)
        assert image.ndim == 3 and image.shape[0] > 100
    assert not (all_methods / "agreement.tsv").exists()  # labelled: scores against labels instead


def test_a_failing_method_is_a_row_not_a_crash(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setitem(compare.FIT, "AE", broken)
    out = tmp_path / "out"
    compare.main([str(DEMO), str(out), str(LATENT), str(DEMO / "labels.txt"), "--seeds", "1", "--methods", "AE,NMF",
                  "--no-umap", *SMALL])
    rows = table(out)
    assert list(rows) == ["AE", "NMF", "LSI", "LSI_Signac", "LSI_US", "LSI_idf"]
    assert rows["AE"]["status"].startswith("failed") and "boom" in rows["AE"]["status"]
    assert int(rows["AE"]["n_seeds"]) == 0 and math.isnan(number(rows["AE"]["ARI_mean"]))
    for method in ("NMF", "LSI", "LSI_Signac", "LSI_US", "LSI_idf"):
        assert rows[method]["status"] == "ok"
        assert in_range(number(rows[method]["ARI_mean"]), -1, 1)
        assert (out / method / "feature.txt").exists()
    assert not (out / "AE").exists()
    assert (out / "comparison.png").exists()


def test_without_labels(tmp_path):
    import matplotlib.image

    out = tmp_path / "out"
    compare.main([str(DEMO), str(out), str(LATENT), "--seeds", "1", "--methods", "AE,NMF", *SMALL])
    rows = table(out)
    assert list(rows) == ["AE", "NMF", "LSI", "LSI_Signac", "LSI_US", "LSI_idf"]
    for row in rows.values():
        assert row["status"] == "ok"
        assert math.isnan(number(row["ARI_mean"])) and math.isnan(number(row["NMI_mean"]))
        assert math.isnan(number(row["ARI_leiden_mean"])) and math.isnan(number(row["ARI_spectral_mean"]))
        assert math.isnan(number(row["knn_purity_mean"]))
        assert in_range(number(row["silhouette_mean"]), -1, 1)
    lines = [line.split("\t") for line in (out / "agreement.tsv").read_text().splitlines()]
    assert lines[0] == ["method", "AE", "NMF", "LSI", "LSI_Signac", "LSI_US", "LSI_idf"]
    values = np.array([[float(v) for v in row[1:]] for row in lines[1:]])
    assert values.shape == (6, 6)
    assert np.all((values >= -1) & (values <= 1))
    np.testing.assert_allclose(np.diag(values), 1.0)
    np.testing.assert_allclose(values, values.T, atol=1e-6)
    assert matplotlib.image.imread(out / "umap_grid.png").ndim == 3


def test_same_seeds_same_scores(tmp_path):
    def scores(name):
        out = tmp_path / name
        compare.main([str(DEMO), str(out), str(LATENT), str(DEMO / "labels.txt"), "--seeds", "1", "--methods", "AE,NMF",
                      "--no-umap", *SMALL])
        keys = [f"{k}_{s}" for k in compare.SCORE_KEYS for s in ("mean", "std")]
        return {m: [row[k] for k in keys] for m, row in table(out).items()}

    first, second = scores("a"), scores("b")
    assert list(first) == ["AE", "NMF", "LSI", "LSI_Signac", "LSI_US", "LSI_idf"]
    assert first == second


def test_unknown_method_is_one_error_line(tmp_path):
    out = tmp_path / "out"
    done = run_script("compare.py", DEMO, out, LATENT, "--methods", "PCA")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --methods") and "PCA" in lines[0], done.stderr
    assert not out.exists()


def test_each_autoencoder_keeps_its_own_input_transform_unless_one_is_given():
    own = compare.options_from_args(compare.build_parser().parse_args(["data", "out", "10"]))
    assert {own[m]["transform"] for m in ("AE", "SparseAE", "StackedAE", "VAE")} == {"tfidf"}  # their cards' defaults
    given = compare.options_from_args(compare.build_parser().parse_args(["data", "out", "10", "--transform", "binary"]))
    assert {given[m]["transform"] for m in ("AE", "SparseAE", "StackedAE", "VAE")} == {"binary"}
