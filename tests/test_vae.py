"""VAE: outputs parse back, the KL term is finite and positive, the mixture prior is fit and sized by the labels,
features are deterministic posterior means, scores beat chance."""
import numpy as np
import pytest
import torch

import scatac
from conftest import DEMO, cpu_trainer, labelled, resolved, run_in_process, shared_path, train_data
from scatac.batches import Batch
from scatac.models import vae
from scatac.models.vae import VariationalAutoEncoder
from scatac.train import Callback


def fit(adata, epochs, **options):
    """tl.vae on a copy of `adata` with latent_dim 8, quietly on one CPU thread: (the fitted AnnData, the model)."""
    adata = adata.copy()
    model = scatac.tl.vae(adata, 8, epochs=epochs, trainer=cpu_trainer(), **options)
    return adata, model


def test_outputs_parse_back_and_loss_records_kl_apart(tmp_path, demo_adata):
    import anndata

    out = tmp_path / "run"
    done = run_in_process("VAE.py", 5, DEMO, out, 6, DEMO / "labels.txt", "--no-umap", "--hidden-dims", "64",
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
    model = VariationalAutoEncoder(**config)
    model.load_state_dict(saved["state_dict"])
    assert bool(model.mixture_ready)
    np.testing.assert_allclose(cpu_trainer().encode(model, train_data(demo_adata)), features, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prior", ["gmm", "normal"])
def test_kl_term_is_finite_and_positive_per_cell(demo_adata, prior):
    _, model = fit(demo_adata, 3, hidden_dims=(32,), prior=prior, kl_warmup=1)
    assert prior == "normal" or bool(model.mixture_ready)
    model.eval()
    with torch.no_grad():
        batch = Batch(train_data(demo_adata), np.arange(200), torch.device("cpu"))
        mean, logvar = model.posterior(batch.x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        kl = model.kl(mean, logvar, z)
    assert kl.shape == (200,)
    assert torch.isfinite(kl).all() and (kl > 0).all()


def test_mixture_prior_is_fit_to_the_codes_and_then_learns(demo_adata):
    fitted, model = fit(demo_adata, 4, hidden_dims=(32,), kl_warmup=2, n_components=3)
    assert model.mixture_means.shape == (3, 8)
    assert fitted.uns["VAE"]["n_components"] == 3 and fitted.uns["VAE"]["prior"] == "gmm"
    weights = torch.softmax(model.mixture_logits, 0)
    assert torch.isclose(weights.sum(), torch.tensor(1.0)) and (weights > 0.01).all()
    assert model.mixture_means.abs().sum() > 0  # no longer the all-zero placeholder
    assert model.mixture_logvars.grad is not None  # trained after the GaussianMixture start


def test_features_are_posterior_means_and_the_seed_reproduces_them(demo_adata):
    runs = [fit(demo_adata, 2, hidden_dims=(32,), seed=seed) for seed in (7, 7, 8)]
    features = [adata.obsm["X_VAE"] for adata, _ in runs]
    np.testing.assert_array_equal(features[0], features[1])
    assert not np.array_equal(features[0], features[2])
    # encoding again gives the same values: no sampling in the features
    np.testing.assert_array_equal(cpu_trainer().encode(runs[0][1], train_data(demo_adata)), features[0])


class EpochNow(Callback):
    """Keeps the epoch under way, for what runs inside it."""

    epoch = None

    def on_epoch_start(self, state):
        self.epoch = state.epoch


@pytest.mark.parametrize("epochs, kl_warmup, options, weights, fit_at", [
    (5, 3, {}, [1 / 3, 2 / 3, 1, 1, 1], [3]),
    # the sampled decoder's records and early stopping's held-out loss are Trainer.full_loss's: the same weight
    (4, 2, {"decoder": "sampled", "early_stopping": True, "patience": 50}, [0.5, 1, 1, 1], [2]),
    (2, 4, {}, [0.25, 0.5], [2]),  # a training shorter than the warm-up still fits its mixture, at its end
    (3, 0, {}, [1, 1, 1], [1]),
    (3, 2, {"prior": "normal"}, [0.5, 1, 1], []),  # nothing to fit
])
def test_kl_warmup_weighs_each_epoch_and_fits_the_mixture_once_at_its_end(demo_adata, monkeypatch, epochs,
                                                                         kl_warmup, options, weights, fit_at):
    now, fits = EpochNow(), []
    fit_mixture = VariationalAutoEncoder.fit_mixture

    def counted(model, means, seed):
        fits.append(now.epoch)
        fit_mixture(model, means, seed)

    monkeypatch.setattr(VariationalAutoEncoder, "fit_mixture", counted)
    run = resolved("VAE", hidden_dims=(16,), epochs=epochs, kl_warmup=kl_warmup, n_components=3, **options)
    trainer = cpu_trainer()
    trainer.max_batches, trainer.callbacks = 2, [now]
    fitted = vae.fit(train_data(demo_adata), 4, run.network, run.training, trainer, 0, **run.schedule)
    np.testing.assert_allclose([record["kl_weight"] for record in fitted.history], weights, rtol=1e-7)
    assert fits == fit_at
    if options.get("early_stopping"):
        assert all(np.isfinite(record["validation_loss"]) for record in fitted.history)
    # outside training the loss is the whole ELBO, however the warm-up ended
    model = fitted.model.eval()
    batch = Batch(train_data(demo_adata), np.arange(32), torch.device("cpu"))
    assert model.kl_weight == 1.0 and float(model.loss(batch)["kl_weight"]) == 1.0


def test_scores_above_chance_on_real_data():
    adata = labelled(shared_path("hemato600"))
    scatac.tl.vae(adata, 8, epochs=15, hidden_dims=(128,), kl_warmup=5, n_components=6, trainer=cpu_trainer())
    scores = scatac.tl.cluster(adata, use_rep="X_VAE", labels_key="label")
    assert scores["ARI"] > 0.1 and scores["NMI"] > 0.15  # chance is ~0 for both
