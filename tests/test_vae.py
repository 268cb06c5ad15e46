"""VAE.py: outputs parse back, the KL term is finite and positive, the mixture prior is fit and sized by the labels,
features are deterministic posterior means, scores beat chance."""
import argparse

import numpy as np
import pytest
import torch

import common
import VAE
from conftest import DEMO, run_script, shared_path


def load(folder):
    args = argparse.Namespace(label_key=None, min_cells_per_peak=3, max_cells_per_peak=1.0, min_peaks_per_cell=10)
    dataset = common.prepare_dataset(folder, folder / "labels.txt", args)
    return dataset, common.TrainData.from_counts(dataset.X, "tfidf")


@pytest.fixture(scope="module")
def demo_data():
    return load(DEMO)


def parse(epochs, *options):
    args = VAE.build_parser().parse_args([str(epochs), "data", "out", "8", *options])
    VAE.validate(args)
    torch.set_num_threads(1)
    common.set_seed(args.seed)
    return args


def test_outputs_parse_back_and_loss_records_kl_apart(tmp_path):
    import anndata

    out = tmp_path / "run"
    done = run_script("VAE.py", 5, DEMO, out, 6, DEMO / "labels.txt", "--no-umap", "--hidden-dims", "64",
                      "--kl-warmup", "2", "--threads", "1")
    assert done.returncode == 0, done.stderr
    n_cells = len((DEMO / "barcodes.txt").read_text().split())
    rows = [line.split("\t") for line in (out / "feature.txt").read_text().splitlines()]
    assert rows[0] == ["barcode", *[f"VAE_{i}" for i in range(1, 7)]]
    features = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    assert features.shape == (n_cells, 6)
    assert anndata.read_h5ad(out / "result.h5ad").obsm["X_VAE"].shape == (n_cells, 6)

    lines = [line.split("\t") for line in (out / "loss.tsv").read_text().splitlines()]
    column = {name: i for i, name in enumerate(lines[0])}
    assert {"loss", "reconstruction", "kl", "kl_weight"} <= set(column)
    kl = np.array([float(row[column["kl"]]) for row in lines[1:]])
    reconstruction = np.array([float(row[column["reconstruction"]]) for row in lines[1:]])
    weight = np.array([float(row[column["kl_weight"]]) for row in lines[1:]])
    assert np.isfinite(kl).all() and (kl > 0).all()
    assert np.isfinite(reconstruction).all() and reconstruction[-1] < reconstruction[0]
    np.testing.assert_allclose(weight, [0.5, 1, 1, 1, 1])  # warm-up over 2 epochs

    # model.pt rebuilds the model: a fitted mixture with one component per label type
    saved = torch.load(out / "model.pt")
    config = {k: v for k, v in saved["config"].items() if k != "settings"}
    assert config["prior"] == "gmm" and config["n_components"] == 6
    model = VAE.VariationalAutoEncoder(**config)
    model.load_state_dict(saved["state_dict"])
    assert bool(model.mixture_ready)
    data = load(DEMO)[1]
    np.testing.assert_allclose(common.encode(model, data, torch.device("cpu")), features, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prior", ["gmm", "normal"])
def test_kl_term_is_finite_and_positive_per_cell(demo_data, prior):
    _, data = demo_data
    result = VAE.fit(data, parse(3, "--hidden-dims", "32", "--prior", prior, "--kl-warmup", "1"), torch.device("cpu"))
    model = result.model
    assert prior == "normal" or bool(model.mixture_ready)
    model.eval()
    with torch.no_grad():
        batch = common.Batch(data, np.arange(200), torch.device("cpu"))
        mean, logvar = model.posterior(batch.x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        kl = model.kl(mean, logvar, z)
    assert kl.shape == (200,)
    assert torch.isfinite(kl).all() and (kl > 0).all()


def test_mixture_prior_is_fit_to_the_codes_and_then_learns(demo_data):
    _, data = demo_data
    args = parse(4, "--hidden-dims", "32", "--kl-warmup", "2", "--n-components", "3")
    result = VAE.fit(data, args, torch.device("cpu"))
    model = result.model
    assert model.mixture_means.shape == (3, 8)
    weights = torch.softmax(model.mixture_logits, 0)
    assert torch.isclose(weights.sum(), torch.tensor(1.0)) and (weights > 0.01).all()
    assert model.mixture_means.abs().sum() > 0  # no longer the all-zero placeholder
    assert model.mixture_logvars.grad is not None  # trained after the GaussianMixture start


def test_features_are_posterior_means_and_the_seed_reproduces_them(demo_data):
    _, data = demo_data
    runs = [VAE.fit(data, parse(2, "--hidden-dims", "32", "--seed", str(seed)), torch.device("cpu")) for seed in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0].latent, runs[1].latent)
    assert not np.array_equal(runs[0].latent, runs[2].latent)
    # encoding again gives the same values: no sampling in the features
    np.testing.assert_array_equal(common.encode(runs[0].model, data, torch.device("cpu")), runs[0].latent)


def test_scores_above_chance_on_real_data():
    dataset, data = load(shared_path("hemato600"))
    args = parse(15, "--hidden-dims", "128", "--kl-warmup", "5")
    args.n_label_types = len(set(dataset.labels))
    result = VAE.fit(data, args, torch.device("cpu"))
    _, scores, _ = common.evaluate(result.latent, dataset.labels, None, 0)
    assert scores["ARI"] > 0.1 and scores["NMI"] > 0.15  # chance is ~0 for both
