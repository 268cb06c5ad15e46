"""The sampled decoder (issue 12): its loss is an unbiased estimate of the full Bernoulli loss, a training step
never builds a (batch, n_peaks) tensor, every autoencoder trains and exports with it, and the full loss is still
what loss.tsv reports."""
import numpy as np
import pytest
import torch

import scatac
from conftest import DEMO, cpu_trainer, read_scores, resolved, run_in_process, train_data
from scatac import methods
from scatac.batches import Batch
from scatac.models.ae import AutoEncoder
from scatac.nn import PeakOutput, PeakSampler, reconstruction_nll
from scatac.train import negatives_per_batch


@pytest.mark.parametrize("uniform_share", [0.0, 0.5])
def test_sampled_loss_is_an_unbiased_estimate_of_the_full_loss(demo_adata, uniform_share):
    data = train_data(demo_adata)
    torch.manual_seed(0)
    model = AutoEncoder(data.n_peaks, 6, **resolved("AE", hidden_dims=(32,)).network).eval()
    batch = Batch(data, np.arange(48), torch.device("cpu"))
    open_fraction = np.bincount(data.inputs.indices, minlength=data.n_peaks) / data.n_cells
    with torch.no_grad():
        code = model.encoder(batch.x)
        full = reconstruction_nll(model.decoder, code, batch).item()
        model.decoder[-1].sampler = PeakSampler(open_fraction, 200, uniform_share=uniform_share)
        estimates = np.array([reconstruction_nll(model.decoder, code, batch).item() for _ in range(300)])
    standard_error = estimates.std() / np.sqrt(len(estimates))
    assert abs(estimates.mean() - full) < 4 * standard_error, (full, estimates.mean(), standard_error)
    assert estimates.std() > 0  # it is an estimate, not the full loss computed another way

    # and so are its gradients: upstream (the code) and the output layer's own (every row, every step)
    code.requires_grad_(True)
    output = model.decoder[-1]
    wrt = (code, output.weight, output.bias)

    def gradients():
        return torch.autograd.grad(reconstruction_nll(model.decoder, code, batch), wrt)

    output.sampler = None
    full_grads = gradients()
    output.sampler = PeakSampler(open_fraction, 400, uniform_share=uniform_share)
    draws = [gradients() for _ in range(60)]
    for name, exact, sampled in zip(("code", "weight", "bias"), full_grads, zip(*draws)):
        mean = torch.stack(sampled).mean(dim=0)
        similarity = torch.nn.functional.cosine_similarity(exact.flatten(), mean.flatten(), dim=0)
        assert similarity > 0.95, (name, float(similarity))
    assert (torch.stack([g[1] for g in draws[:5]]).abs().sum(dim=2) > 0).all(), "a row of the output layer sat still"


def test_a_sampled_step_never_builds_a_batch_by_peaks_tensor(demo_adata):
    """Only (batch, drawn peaks) logits and the output rows' (8 cells, n_peaks) block: never (batch, n_peaks)."""
    data = train_data(demo_adata)
    torch.manual_seed(0)
    model = AutoEncoder(data.n_peaks, 6, **resolved("AE", hidden_dims=(32,)).network)
    model.decoder[-1].sampler = PeakSampler(np.ones(data.n_peaks), 300)

    def no_full_logits(module, inputs):
        raise AssertionError("the full (batch, n_peaks) logits were computed")

    model.decoder[-1].register_forward_pre_hook(no_full_logits)
    batch = Batch(data, np.arange(64), torch.device("cpu"))
    model.loss(batch)["loss"].backward()
    assert batch._target is None, "the dense target was built"
    assert model.encoder[0].weight.grad is not None and model.decoder[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fit, key, options", [
    (scatac.tl.ae, "AE", {"epochs": 3, "hidden_dims": (64,)}),
    (scatac.tl.sparse_ae, "SparseAE", {"epochs": 3, "hidden_dims": (64,)}),
    (scatac.tl.stacked_ae, "StackedAE", {"pretrain_epochs": 1, "finetune_epochs": 2, "hidden_dims": (64,)}),
    (scatac.tl.vae, "VAE", {"epochs": 3, "hidden_dims": (64,), "kl_warmup": 1}),
])
def test_every_autoencoder_trains_with_the_sampled_decoder(demo_adata, fit, key, options):
    adata = demo_adata.copy()
    model = fit(adata, 6, decoder="sampled", negatives="2x", trainer=cpu_trainer(), **options)
    assert [m.sampler is not None for m in model.modules() if isinstance(m, PeakOutput)] == [True]
    features = adata.obsm[f"X_{key}"]
    assert features.shape == (adata.n_obs, 6) and np.isfinite(features).all() and features.std() > 0
    loss = adata.uns[key]["loss"]
    assert {"loss", "sampled_loss"} <= set(loss.columns) and np.isfinite(loss["loss"]).all()
    assert adata.uns[key]["params"]["decoder"] == "sampled"


def test_the_reported_loss_is_the_full_loss(demo_adata):
    """A sampled run's loss.tsv 'loss' is the full loss on a sample of cells: as a full run's, not its estimate."""
    full, sampled = demo_adata.copy(), demo_adata.copy()
    scatac.tl.ae(full, 6, epochs=2, hidden_dims=(32,), trainer=cpu_trainer())
    scatac.tl.ae(sampled, 6, epochs=2, hidden_dims=(32,), decoder="sampled", negatives="300", trainer=cpu_trainer())
    first_full = full.uns["AE"]["loss"]["loss"].iloc[0]
    first_sampled = sampled.uns["AE"]["loss"]["loss"].iloc[0]
    assert abs(first_sampled - first_full) < 0.1 * first_full, (first_full, first_sampled)


def test_the_sampled_decoder_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    done = run_in_process("AE.py", 20, DEMO, out, 6, DEMO / "labels.txt", "--decoder", "sampled", "--negatives", "3x",
                          "--no-umap", "--hidden-dims", "64", "--threads", "1")
    assert done.returncode == 0, done.stderr
    header = (out / "loss.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["phase", "epoch", "loss", "sampled_loss"]
    assert read_scores(out)["ARI"] > 0.3  # the demo's six types; chance is ~0
    bad = run_in_process("AE.py", 2, DEMO, tmp_path / "bad", 6, "--negatives", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "error: --negatives: must be a count like '2000' or a ratio like '4x', got '0'")


def test_negatives_are_a_count_or_a_ratio_to_the_open_peaks(demo_adata):
    data = train_data(demo_adata)
    mean_open = data.inputs.nnz / data.n_cells
    assert negatives_per_batch("1500", data) == 1500
    assert negatives_per_batch("2x", data) == round(2 * mean_open)
    assert negatives_per_batch("0.5x", data) == round(0.5 * mean_open)


def test_auto_samples_from_2000_sparse_cells_and_grows_the_batch_only_then():
    import scipy.sparse as sp

    from scatac.batches import TrainData
    from scatac.train import auto_batch_size, decoder_for

    def data(n_cells, n_peaks, density):
        X = sp.random(n_cells, n_peaks, density=density, format="csr", random_state=0, dtype=np.float32)
        X.data[:] = 1
        return TrainData.from_counts(X, "binary")

    assert decoder_for(data(800, 3000, 0.03), "auto", "2x") == "full"  # the demo: fewer than 2,000 cells
    assert decoder_for(data(2500, 3000, 0.03), "auto", "2x") == "sampled"
    assert decoder_for(data(2500, 3000, 0.25), "auto", "2x") == "full"  # dense data: sampling saves nothing
    assert decoder_for(data(800, 3000, 0.03), "sampled", "2x") == "sampled"  # asked for is asked for
    assert methods.AE.options["decoder"].default == "auto" and methods.AE.options["batch_size"].default == "auto"
    assert auto_batch_size(600, 60, sampled=False) == 64 == auto_batch_size(100000, 60, sampled=False)
    assert auto_batch_size(3998, 60, sampled=True) == 512  # about 8 steps an epoch
    assert auto_batch_size(3998, 5, sampled=True) == 64  # a short phase keeps its steps
    assert auto_batch_size(100000, 10, sampled=True) == 1024
