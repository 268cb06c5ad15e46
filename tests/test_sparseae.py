"""SparseAE.py: outputs parse back, the KL sparsity penalty really acts, scores beat chance, seeds reproduce."""
import argparse

import numpy as np
import pytest
import torch

import common
import SparseAE
from conftest import DEMO, read_scores, run_script, shared_path


def load(folder, **overrides):
    args = argparse.Namespace(label_key=None, min_cells_per_peak=3, max_cells_per_peak=1.0, min_peaks_per_cell=10)
    dataset = common.prepare_dataset(folder, folder / "labels.txt", args)
    return dataset, common.TrainData.from_counts(dataset.X, "tfidf")


@pytest.fixture(scope="module")
def demo_data():
    return load(DEMO)


def fit_args(epochs, *options):
    args = SparseAE.build_parser().parse_args([str(epochs), "data", "out", "8", *options])
    SparseAE.validate(args)
    return args


def fit(data, epochs, *options):
    args = fit_args(epochs, *options)
    torch.set_num_threads(1)
    common.set_seed(args.seed)
    return SparseAE.fit(data, args, torch.device("cpu"))


def test_outputs_parse_back_with_the_right_shapes(tmp_path):
    import anndata

    out = tmp_path / "run"
    done = run_script("SparseAE.py", 4, DEMO, out, 7, DEMO / "labels.txt", "--no-umap", "--hidden-dims", "64", "--threads", "1")
    assert done.returncode == 0, done.stderr
    n_cells = len((DEMO / "barcodes.txt").read_text().split())
    rows = [line.split("\t") for line in (out / "feature.txt").read_text().splitlines()]
    assert rows[0] == ["barcode", *[f"SparseAE_{i}" for i in range(1, 8)]]
    features = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    assert features.shape == (n_cells, 7) and np.isfinite(features).all()
    adata = anndata.read_h5ad(out / "result.h5ad")
    assert adata.obsm["X_SparseAE"].shape == (n_cells, 7)
    np.testing.assert_allclose(adata.obsm["X_SparseAE"], features, rtol=1e-5, atol=1e-6)
    header = (out / "loss.tsv").read_text().splitlines()[0].split("\t")
    assert header[:2] == ["phase", "epoch"] and {"reconstruction", "sparsity_kl", "mean_activation"} <= set(header)
    # model.pt rebuilds the model, and the model gives back the features
    saved = torch.load(out / "model.pt")
    config = {k: v for k, v in saved["config"].items() if k != "settings"}
    model = SparseAE.SparseAutoEncoder(**config)
    model.load_state_dict(saved["state_dict"])
    data = load(DEMO)[1]
    np.testing.assert_allclose(common.encode(model, data, torch.device("cpu")), features, rtol=1e-4, atol=1e-4)
    scores = read_scores(out)
    assert -1 <= scores["ARI"] <= 1 and scores["n_cells"] == n_cells and scores["n_clusters"] == 6


def test_penalty_has_a_gradient_and_lowers_mean_activation(demo_data):
    _, data = demo_data
    # The original compared rho with a softmax, whose mean is always 1/units: no gradient.
    model = SparseAE.SparseAutoEncoder(data.n_peaks, 8, hidden_dims=(32,))
    batch = common.Batch(data, np.arange(64), torch.device("cpu"))
    penalty = SparseAE.kl_sparsity(model.code(batch.x).mean(dim=0), 0.05)
    penalty.backward()
    assert penalty.item() > 0
    assert model.encoder[0].weight.grad.abs().sum().item() > 0

    def mean_activation(result):
        return float(torch.sigmoid(torch.from_numpy(result.latent)).mean())

    plain = fit(data, 6, "--hidden-dims", "64", "--sparsity-weight", "0")
    sparse = fit(data, 6, "--hidden-dims", "64", "--sparsity-target", "0.05")
    assert mean_activation(sparse) < 0.6 * mean_activation(plain)
    assert mean_activation(sparse) < 0.15


def test_same_seed_gives_the_same_features(demo_data):
    _, data = demo_data
    first = fit(data, 2, "--hidden-dims", "32", "--seed", "5")
    second = fit(data, 2, "--hidden-dims", "32", "--seed", "5")
    other = fit(data, 2, "--hidden-dims", "32", "--seed", "6")
    np.testing.assert_array_equal(first.latent, second.latent)
    assert not np.array_equal(first.latent, other.latent)


def test_scores_above_chance_on_real_data():
    folder = shared_path("hemato600")
    dataset, data = load(folder)
    result = fit(data, 20, "--hidden-dims", "128")
    _, scores, _ = common.evaluate(result.latent, dataset.labels, None, 0)
    assert scores["ARI"] > 0.1 and scores["NMI"] > 0.15  # chance is ~0 for both


@pytest.mark.parametrize("option, value", [("--sparsity-target", "1.5"), ("--sparsity-target", "0"), ("--sparsity-weight", "-1")])
def test_bad_sparsity_options_are_one_line_errors(tmp_path, option, value):
    done = run_script("SparseAE.py", 2, DEMO, tmp_path / "out", 5, option, value)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {option}:")
    assert not (tmp_path / "out").exists()
