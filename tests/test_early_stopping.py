"""Early stopping (issue 15): held-out cells' loss decides when training stops, recorded in run.json; the held-out
cells still get features, and the same seed gives the same run."""
import json

import numpy as np
import pytest

import scatac
from conftest import DEMO, run_in_process

SMALL = dict(hidden_dims=(64,), progress=False)


@pytest.fixture(scope="module")
def demo():
    adata = scatac.read(DEMO, verbose=False)
    scatac.pp.filter(adata, verbose=False)
    return adata


def test_training_stops_when_the_held_out_loss_stalls(demo):
    adata = demo.copy()
    scatac.tl.ae(adata, 4, epochs=300, early_stopping=True, patience=2, seed=0, **SMALL)
    trained = adata.uns["AE"]["epochs_trained"]["train"]
    assert 2 < trained < 300
    loss = adata.uns["AE"]["loss"]
    assert len(loss) == trained and np.all(np.isfinite(loss["validation_loss"]))
    # it stopped because the held-out loss had not improved (by 1e-4 of itself) in the last `patience` epochs
    held_out = loss["validation_loss"].to_numpy()
    assert held_out[-2:].min() >= held_out[:-2].min() * (1 - 1e-4)
    assert adata.obsm["X_AE"].shape == (adata.n_obs, 4) and np.all(np.isfinite(adata.obsm["X_AE"]))


def test_the_same_seed_stops_at_the_same_epoch_with_the_same_features(demo):
    first, second = demo.copy(), demo.copy()
    for adata in (first, second):
        scatac.tl.vae(adata, 4, epochs=40, kl_warmup=5, early_stopping=True, patience=2, seed=1, **SMALL)
    assert first.uns["VAE"]["epochs_trained"] == second.uns["VAE"]["epochs_trained"]
    assert first.uns["VAE"]["epochs_trained"]["train"] >= 5  # never inside the KL warm-up
    np.testing.assert_array_equal(first.obsm["X_VAE"], second.obsm["X_VAE"])


def test_a_script_records_the_epochs_it_stopped_at(tmp_path):
    done = run_in_process("StackedAE.py", 2, 200, DEMO, tmp_path / "out", 4, "--early-stopping", "--patience", "2",
                          "--no-umap", "--threads", "1", "--hidden-dims", "32")
    assert done.returncode == 0, done.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    trained = run["fit"]["epochs_trained"]
    assert trained["pretrain_layer1"] == 2 and 2 < trained["finetune"] < 200


@pytest.mark.parametrize("flags, words", [(["--early-stopping", "--validation-fraction", "0.7"], "--validation-fraction"),
                                          (["--early-stopping", "--patience", "0"], "--patience")])
def test_bad_early_stopping_options_are_one_line(tmp_path, flags, words):
    done = run_in_process("AE.py", 3, DEMO, tmp_path / "out", 4, *flags)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
