"""StackedAE: real layer-wise pretraining, fine-tuning from the pretrained weights with every layer free,
outputs that parse back, scores above chance, seeds that reproduce."""
import copy
from dataclasses import replace

import numpy as np
import torch

import scatac
from conftest import DEMO, cpu_trainer, labelled, resolved, run_in_process, shared_path, train_data
from scatac.batches import Batch
from scatac.io import write_10x
from scatac.models import stacked_ae
from scatac.models.stacked_ae import StackedAutoEncoder
from scatac.simulate import simulate_atac


def options(pretrain, finetune, **given):
    return resolved("StackedAE", pretrain_epochs=pretrain, finetune_epochs=finetune, **given)


def pretraining(run):
    """The TrainConfig the fit hands pretrain(): the run's, for its pretrain_epochs."""
    return replace(run.training, epochs=run.schedule["pretrain_epochs"])


def whole_stack_loss(model, data):
    model.eval()
    with torch.no_grad():
        batch = Batch(data, np.arange(data.n_cells), torch.device("cpu"))
        return model.reconstruction(batch).item()


def test_outputs_parse_back_and_loss_marks_each_phase(tmp_path, demo_adata):
    import anndata

    out = tmp_path / "run"
    done = run_in_process("StackedAE.py", 4, 3, DEMO, out, 6, DEMO / "labels.txt", "--no-umap",
                          "--hidden-dims", "64", "32", "--threads", "1")
    assert done.returncode == 0, done.stderr
    n_cells = len((DEMO / "barcodes.txt").read_text().split())
    rows = [line.split("\t") for line in (out / "feature.txt").read_text().splitlines()]
    assert rows[0] == ["barcode", *[f"StackedAE_{i}" for i in range(1, 7)]]
    features = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    assert features.shape == (n_cells, 6)
    assert anndata.read_h5ad(out / "result.h5ad").obsm["X_StackedAE"].shape == (n_cells, 6)

    lines = [line.split("\t") for line in (out / "loss.tsv").read_text().splitlines()]
    assert lines[0][:3] == ["phase", "epoch", "loss"]
    phases = {}
    for phase, epoch, loss, *_ in lines[1:]:
        phases.setdefault(phase, []).append(float(loss))
    assert list(phases) == ["pretrain_layer1", "pretrain_layer2", "pretrain_layer3", "finetune"]
    assert [len(v) for v in phases.values()] == [4, 4, 4, 3]
    for phase in ("pretrain_layer1", "pretrain_layer2", "pretrain_layer3"):
        assert phases[phase][-1] < phases[phase][0], f"{phase} did not learn: {phases[phase]}"

    saved = torch.load(out / "model.pt")
    model = StackedAutoEncoder(**{k: v for k, v in saved["config"].items() if k != "settings"})
    model.load_state_dict(saved["state_dict"])
    np.testing.assert_allclose(cpu_trainer().encode(model, train_data(demo_adata)), features, rtol=1e-4, atol=1e-4)


def test_pretraining_trains_only_its_layer_and_the_stack_improves(demo_adata):
    data = train_data(demo_adata)
    run = options(3, 1, hidden_dims=(64, 32))
    torch.manual_seed(0)
    model = StackedAutoEncoder(data.n_peaks, 8, **run.network)
    fresh = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    history = stacked_ae.pretrain(model, data, pretraining(run), cpu_trainer(), seed=0)
    after = model.state_dict()
    # every encoder and decoder moved during pretraining (each layer had its own turn)
    for name in before:
        if name.startswith(("encoders.", "decoders.")) and before[name].dtype.is_floating_point:
            assert not torch.equal(before[name], after[name]), f"{name} was never pretrained"
    by_phase = {}
    for record in history:
        by_phase.setdefault(record["phase"], []).append(record["loss"])
    assert len(by_phase) == 3 and all(v[-1] < v[0] for v in by_phase.values())
    # the pretrained stack already rebuilds the peaks far better than a fresh one
    assert whole_stack_loss(model, data) < 0.95 * whole_stack_loss(fresh, data)


def test_finetuning_starts_from_pretrained_weights_and_moves_every_layer(demo_adata):
    data = train_data(demo_adata)
    chosen = options(3, 2, hidden_dims=(64, 32))
    torch.manual_seed(0)
    model = StackedAutoEncoder(data.n_peaks, 8, **chosen.network)
    fresh_state = copy.deepcopy(model.state_dict())
    trainer = cpu_trainer()
    stacked_ae.pretrain(model, data, pretraining(chosen), trainer, seed=0)
    pretrained_state = copy.deepcopy(model.state_dict())
    pretrained_loss = whole_stack_loss(model, data)
    history = stacked_ae.finetune(model, data, chosen.training, trainer, seed=0)
    tuned_state = model.state_dict()
    for name, pretrained in pretrained_state.items():
        if not pretrained.dtype.is_floating_point:
            continue
        # the original's `require_grad` typo froze all but the last layer; here each one learns
        assert not torch.equal(pretrained, tuned_state[name]), f"{name} stayed frozen during fine-tuning"
        if name.endswith("weight") and pretrained.dim() == 2:
            # and it moved from its pretrained value, not from a fresh initialisation
            assert (tuned_state[name] - pretrained).norm() < (tuned_state[name] - fresh_state[name]).norm()
    assert history[0]["phase"] == "finetune"
    assert history[0]["loss"] < 1.1 * pretrained_loss + 1


def test_same_seed_gives_the_same_features(demo_adata):
    runs = []
    for seed in (3, 3, 4):
        adata = demo_adata.copy()
        scatac.tl.stacked_ae(adata, 8, seed=seed, pretrain_epochs=2, finetune_epochs=1, hidden_dims=(32,),
                             trainer=cpu_trainer())
        runs.append(adata.obsm["X_StackedAE"])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_scores_above_chance_on_real_data():
    adata = labelled(shared_path("hemato600"))
    scatac.tl.stacked_ae(adata, 8, pretrain_epochs=3, finetune_epochs=10, hidden_dims=(128,), trainer=cpu_trainer())
    scores = scatac.tl.cluster(adata, use_rep="X_StackedAE", labels_key="label")
    assert scores["ARI"] > 0.1 and scores["NMI"] > 0.15  # chance is ~0 for both


def test_any_number_of_peaks_is_accepted(tmp_path):
    # the original hard-coded 11,285 input peaks
    X, labels, barcodes, peaks = simulate_atac(n_cells=60, n_peaks=321, n_types=2, density=0.1, seed=1)
    write_10x(tmp_path / "tiny", X, barcodes, peaks, labels)
    done = run_in_process("StackedAE.py", 1, 1, tmp_path / "tiny", tmp_path / "out", 3, "--no-umap", "--hidden-dims",
                          "16")
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "out" / "feature.txt").read_text().splitlines()
    assert len(rows) > 50 and all(len(row.split("\t")) == 4 for row in rows)
