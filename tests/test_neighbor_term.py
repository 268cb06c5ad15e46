"""The autoencoders' neighbour term: reference neighbours that are the cells' own kind, a ratio that the code's scale
cannot game, held-out cells kept out of it, and a training that reports it, on by default and off at weight 0."""
import numpy as np
import pytest
import scipy.sparse as sp

import scatac
from conftest import cpu_trainer, labelled, shared_path


def neighbour_purity(neighbors: np.ndarray, labels: np.ndarray) -> float:
    return float((labels[neighbors] == labels[:, None]).mean())


def chance(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    return float(((counts / counts.sum()) ** 2).sum())


def test_reference_neighbors_are_other_cells_mostly_of_the_same_type():
    adata = labelled(shared_path("hemato600"))
    labels = adata.obs["label"].to_numpy()
    neighbors = scatac.pp.reference_neighbors(adata.X, n_components=10, n_neighbors=15)
    assert neighbors.shape == (adata.n_obs, 15) and neighbors.dtype == np.int64
    assert not (neighbors == np.arange(adata.n_obs)[:, None]).any(), "a cell is its own neighbour"
    assert all(len(set(row)) == 15 for row in neighbors)
    # the 15-NN purity of the geometry the term pulls towards: well above chance (about 0.2 here)
    assert neighbour_purity(neighbors, labels) > 0.6 > 3 * chance(labels)


def test_identical_cells_and_tiny_inputs_keep_neighbors_well_formed():
    rng = np.random.default_rng(0)
    dense = (rng.random((12, 40)) < 0.3).astype(np.float32)
    dense[5] = dense[4]  # two identical cells: each may list the other first, never itself
    neighbors = scatac.pp.reference_neighbors(sp.csr_matrix(dense), n_components=3, n_neighbors=4)
    assert neighbors.shape == (12, 4) and not (neighbors == np.arange(12)[:, None]).any()
    assert scatac.pp.reference_neighbors(sp.csr_matrix(dense[:3]), n_components=3, n_neighbors=15).shape == (3, 2)


def test_the_ratio_ignores_the_codes_scale_and_is_zero_on_the_neighbours_themselves():
    import torch

    from scatac.nn import neighbor_ratio

    code, near = torch.randn(32, 5), torch.randn(32, 5)
    torch.manual_seed(0)
    ratio = neighbor_ratio(code, near)
    torch.manual_seed(0)
    assert neighbor_ratio(10 * code, 10 * near).item() == pytest.approx(ratio.item(), rel=1e-5)
    assert neighbor_ratio(code, code.clone()).item() == 0.0


def test_held_out_cells_are_never_drawn_as_neighbours():
    from scatac.batches import draw_neighbors

    neighbors = np.tile(np.arange(10), (10, 1))[:, 1:]  # every cell lists cells 1..9
    allowed = np.ones(10, dtype=bool)
    allowed[[3, 7]] = False
    rows = np.array([0, 1, 2, 4, 5])
    for seed in range(20):
        picked = draw_neighbors(rows, neighbors, np.random.default_rng(seed), allowed)
        assert allowed[picked].all() and picked.shape == rows.shape


def test_the_term_is_on_by_default_reported_per_epoch_and_off_at_weight_zero(demo_adata):
    adata = demo_adata.copy()
    scatac.tl.ae(adata, 4, epochs=4, hidden_dims=(32,), trainer=cpu_trainer())
    loss = adata.uns["AE"]["loss"]
    assert adata.uns["AE"]["params"]["neighbor_weight"] == 0.1
    assert "neighbor" in loss and ((loss["neighbor"] > 0) & (loss["neighbor"] < 2)).all()
    assert loss["neighbor"].iloc[-1] < loss["neighbor"].iloc[0], "training did not bring neighbours closer"
    with_term = adata.obsm["X_AE"].copy()
    scatac.tl.ae(adata, 4, epochs=4, hidden_dims=(32,), trainer=cpu_trainer())
    np.testing.assert_array_equal(adata.obsm["X_AE"], with_term)  # the same seed, the same features
    scatac.tl.ae(adata, 4, epochs=4, hidden_dims=(32,), trainer=cpu_trainer(), neighbor_weight=0)
    assert "neighbor" not in adata.uns["AE"]["loss"] and not np.array_equal(adata.obsm["X_AE"], with_term)


def test_a_negative_weight_is_an_input_error(demo_adata):
    with pytest.raises(scatac.InputError, match="neighbor_weight"):
        scatac.tl.ae(demo_adata.copy(), 4, epochs=1, neighbor_weight=-1)


def test_the_term_can_wait_for_the_reconstruction(demo_adata):
    """neighbor_after N: the first N epochs train on the reconstruction alone (no pairs drawn, no term recorded)."""
    adata = demo_adata.copy()
    scatac.tl.ae(adata, 4, epochs=4, hidden_dims=(32,), trainer=cpu_trainer(), neighbor_after=2)
    loss = adata.uns["AE"]["loss"]
    assert adata.uns["AE"]["params"]["neighbor_after"] == 2
    assert loss["neighbor"].iloc[:2].isna().all() and (loss["neighbor"].iloc[2:] > 0).all()
    late = adata.obsm["X_AE"].copy()
    scatac.tl.ae(adata, 4, epochs=4, hidden_dims=(32,), trainer=cpu_trainer(), neighbor_after=4)
    assert "neighbor" not in adata.uns["AE"]["loss"] and not np.array_equal(adata.obsm["X_AE"], late)
    with pytest.raises(scatac.InputError, match="neighbor_after"):
        scatac.tl.ae(adata, 4, epochs=1, neighbor_after=-1)
