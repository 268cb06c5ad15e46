"""Sparse mini-batches: what the autoencoders see equals the densified rows, and the sparse first layer
and input dropout behave as their dense counterparts (issue 7: the matrix is never densified whole)."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import resolved
from scatac.batches import Batch, SparseRows, TrainData
from scatac.models.ae import AutoEncoder
from scatac.nn import PeakDropout, PeakLinear


@pytest.fixture(scope="module")
def counts():
    X = sp.random(50, 300, density=0.05, format="csr", random_state=3, dtype=np.float32)
    X.data = np.ceil(X.data * 4)
    return X


def test_batch_matches_densified_rows(counts):
    data = TrainData.from_counts(counts, "tfidf")
    rows = np.array([7, 2, 40, 2, 19])  # unsorted, with a repeat
    batch = Batch(data, rows, torch.device("cpu"))
    assert isinstance(batch.x, SparseRows)
    assert batch.x.shape == (5, 300)
    expected = data.inputs[rows].toarray()
    np.testing.assert_allclose(batch.x.to_dense().numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(batch.target.numpy(), (counts[rows].toarray() > 0).astype(np.float32))
    np.testing.assert_allclose(batch.depth.numpy().ravel(), data.depth[rows])
    lazy = Batch(data, rows, torch.device("cpu"))
    assert lazy._target is None  # the dense target is made only when a full decoder asks for it
    np.testing.assert_array_equal(lazy.target.numpy(), batch.target.numpy())


def test_explicit_zeros_are_not_open_peaks():
    X = sp.csr_matrix((np.array([1.0, 0.0, 2.0], dtype=np.float32), np.array([0, 1, 2]), np.array([0, 3])), shape=(1, 4))
    data = TrainData.from_counts(X, "binary")
    target = Batch(data, np.array([0]), torch.device("cpu")).target.numpy()
    np.testing.assert_array_equal(target, [[1, 0, 1, 0]])


def test_peak_linear_sparse_equals_dense(counts):
    torch.manual_seed(0)
    layer = PeakLinear(300, 16)
    data = TrainData.from_counts(counts, "tfidf")
    batch = Batch(data, np.arange(20), torch.device("cpu"))
    sparse_out = layer(batch.x)
    sparse_out.square().sum().backward()
    sparse_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    dense_out = layer(batch.x.to_dense())
    dense_out.square().sum().backward()
    torch.testing.assert_close(sparse_out, dense_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse_grad, layer.weight.grad, rtol=1e-4, atol=1e-5)


def test_peak_dropout_drops_stored_values_only(counts):
    data = TrainData.from_counts(counts, "binary")
    batch = Batch(data, np.arange(50), torch.device("cpu"))
    dropout = PeakDropout(0.8)
    torch.manual_seed(0)
    dropped = dropout(batch.x)
    assert torch.equal(dropped.indices, batch.x.indices)
    kept = dropped.values != 0
    torch.testing.assert_close(dropped.values[kept], torch.full((int(kept.sum()),), 5.0))
    assert 0.1 < kept.float().mean() < 0.3  # about 1 - p of the values survive
    dropout.eval()
    assert dropout(batch.x) is batch.x


def test_autoencoder_first_layer_is_sparse():
    model = AutoEncoder(n_peaks=300, latent_dim=4, **resolved("AE", hidden_dims=(32,)).network)
    assert isinstance(model.encoder[0], PeakLinear)
    assert isinstance(model.input_dropout, PeakDropout)


def test_idf_weights_open_peaks_by_log_inverse_frequency(counts):
    """pp.idf: binary x log(n_cells / cells opening the peak), each row L2-normalized, computed densely here."""
    from scatac.pp import idf

    dense = (counts.toarray() > 0).astype(np.float64)
    weighted = dense * np.log(len(dense) / np.maximum(dense.sum(0), 1))
    expected = weighted / np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-12)
    result = idf(counts)
    np.testing.assert_allclose(result.toarray(), expected, rtol=1e-5, atol=1e-7)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result.indices, counts.indices)  # the pattern is the counts'


def test_a_peak_open_in_every_cell_weighs_nothing_but_stays_a_target():
    X = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 3], [2, 0, 0]], dtype=np.float32))
    data = TrainData.from_counts(X, "idf")
    batch = Batch(data, np.arange(3), torch.device("cpu"))
    np.testing.assert_allclose(batch.x.to_dense().numpy()[:, 0], 0)  # open everywhere: no information
    np.testing.assert_array_equal(batch.x.to_dense().numpy()[2], [0, 0, 0])  # its only peak: an all-zero input
    np.testing.assert_array_equal(batch.target.numpy(), (X.toarray() > 0).astype(np.float32))
