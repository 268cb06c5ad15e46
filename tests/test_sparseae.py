"""SparseAE: outputs parse back, the KL sparsity penalty really acts, scores beat chance, seeds reproduce."""
import numpy as np
import pytest
import torch

import scatac
from conftest import (DEMO, cpu_trainer, labelled, read_scores, resolved, run_in_process, run_script,
                      shared_path, train_data)
from scatac.batches import Batch
from scatac.models.sparse_ae import SparseAutoEncoder, kl_sparsity


def fit(adata, epochs, **options):
    """tl.sparse_ae on a copy of `adata` with latent_dim 8, quietly on one CPU thread: the features."""
    adata = adata.copy()
    scatac.tl.sparse_ae(adata, 8, epochs=epochs, trainer=cpu_trainer(), **options)
    return adata.obsm["X_SparseAE"]


def test_outputs_parse_back_with_the_right_shapes(tmp_path, demo_adata):
    import anndata

    out = tmp_path / "run"
    done = run_in_process("SparseAE.py", 4, DEMO, out, 7, DEMO / "labels.txt", "--no-umap", "--hidden-dims", "64",
                          "--threads", "1")
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
    model = SparseAutoEncoder(**config)
    model.load_state_dict(saved["state_dict"])
    np.testing.assert_allclose(cpu_trainer().encode(model, train_data(demo_adata)), features, rtol=1e-4, atol=1e-4)
    scores = read_scores(out)
    assert -1 <= scores["ARI"] <= 1 and scores["n_cells"] == n_cells and scores["n_clusters"] == 6


def test_penalty_has_a_gradient_and_lowers_mean_activation(demo_adata):
    data = train_data(demo_adata)
    # The original compared rho with a softmax, whose mean is always 1/units: no gradient.
    model = SparseAutoEncoder(data.n_peaks, 8, **resolved("SparseAE", hidden_dims=(32,)).network)
    batch = Batch(data, np.arange(64), torch.device("cpu"))
    penalty = kl_sparsity(model.code(batch.x).mean(dim=0), 0.05)
    penalty.backward()
    assert penalty.item() > 0
    assert model.encoder[0].weight.grad.abs().sum().item() > 0

    def mean_activation(features):
        return float(torch.sigmoid(torch.from_numpy(features)).mean())

    # the penalty alone: the neighbour term also moves the code's logits
    plain = fit(demo_adata, 6, hidden_dims=(64,), sparsity_weight=0, neighbor_weight=0)
    sparse = fit(demo_adata, 6, hidden_dims=(64,), sparsity_target=0.05, neighbor_weight=0)
    assert mean_activation(sparse) < 0.6 * mean_activation(plain)
    assert mean_activation(sparse) < 0.15


def test_same_seed_gives_the_same_features(demo_adata):
    first, second, other = (fit(demo_adata, 2, hidden_dims=(32,), seed=seed) for seed in (5, 5, 6))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_scores_above_chance_on_real_data():
    adata = labelled(shared_path("hemato600"))
    scatac.tl.sparse_ae(adata, 8, epochs=20, hidden_dims=(128,), trainer=cpu_trainer())
    scores = scatac.tl.cluster(adata, use_rep="X_SparseAE", labels_key="label")
    assert scores["ARI"] > 0.1 and scores["NMI"] > 0.15  # chance is ~0 for both


@pytest.mark.parametrize("option, value", [("--sparsity-target", "1.5"), ("--sparsity-target", "0"), ("--sparsity-weight", "-1")])
def test_bad_sparsity_options_are_one_line_errors(tmp_path, option, value):
    done = run_script("SparseAE.py", 2, DEMO, tmp_path / "out", 5, option, value)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {option}: must be a number")
    assert not (tmp_path / "out").exists()
