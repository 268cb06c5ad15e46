"""Atlas scale: counts in an on-disk store read in blocks (scatac.io.store), transforms fitted per peak and applied
per block (pp.peak_weights, pp.transform_rows), cell data and streamed batches over a store (scatac.streamed),
and a simulated store written block by block (simulate.simulate_store)."""
import os

import numpy as np
import pytest
import scipy.sparse as sp

import scatac
from conftest import DEMO
from test_formats import write_10x_h5  # Cell Ranger's HDF5 layout, written once for both files
from scatac import pp
from scatac.batches import TrainData
from scatac.errors import InputError
from scatac.io.store import convert_to_store, open_store, write_store
from scatac.params import TRANSFORMS

anndata = pytest.importorskip("anndata")
h5py = pytest.importorskip("h5py")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def demo():
    return scatac.read(DEMO, labels=DEMO / "labels.txt", verbose=False)


@pytest.fixture(scope="module")
def demo_store(demo, tmp_path_factory):
    """The demo written as a store in blocks of 97 cells (blocks that do not divide the 800 cells)."""
    path = tmp_path_factory.mktemp("store") / "demo.store.h5ad"
    X = demo.X
    write_store((X[i:i + 97] for i in range(0, X.shape[0], 97)), path, barcodes=list(demo.obs_names),
                peaks=list(demo.var_names), labels=demo.obs["label"].to_numpy(), progress=False)
    return path


def random_counts(n_cells=150, n_peaks=90, density=0.08, seed=0):
    """Counts 1 to 4, float32 CSR, with two empty rows and one empty column."""
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, n_peaks, density=density, random_state=rng, format="csr", dtype=np.float32)
    X.data = np.ceil(X.data * 4).astype(np.float32)
    X = X.tolil()
    X[3, :] = 0
    X[40, :] = 0
    X[:, 7] = 0
    X = X.tocsr()
    X.eliminate_zeros()
    return X


def same_csr(a, b):
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    return (a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
            and a.data.dtype == b.data.dtype and a.data.tobytes() == b.data.tobytes())


def same_batch(first, second):
    return all(torch.equal(getattr(first.x, field), getattr(second.x, field)) for field in ("offsets", "indices", "values")) \
        and torch.equal(first.depth, second.depth) and first.x.shape == second.x.shape


# ---- the store ----------------------------------------------------------------------------------------------------


def test_a_store_reads_back_as_the_anndata_it_was_written_from(demo, demo_store):
    adata = anndata.read_h5ad(demo_store)
    assert same_csr(adata.X, demo.X)
    assert list(adata.obs_names) == list(demo.obs_names) and list(adata.var_names) == list(demo.var_names)
    assert list(adata.obs["label"]) == list(demo.obs["label"])
    backed = anndata.read_h5ad(demo_store, backed="r")
    assert backed.shape == demo.shape
    assert same_csr(backed.X[100:130], demo.X[100:130])
    backed.file.close()
    with h5py.File(demo_store, "r") as handle:  # 64-bit row pointers: a store may pass 2**31 values
        assert handle["X"]["indptr"].dtype == np.int64


def test_rows_come_back_as_asked(demo, demo_store):
    with open_store(demo_store) as counts:
        assert counts.shape == demo.shape and counts.nnz == demo.X.nnz
        assert list(counts.obs_names) == list(demo.obs_names) and list(counts.var_names) == list(demo.var_names)
        assert same_csr(counts.read_rows(95, 300), demo.X[95:300])
        assert counts.read_rows(790, 900).shape == (10, demo.n_vars)
        rows = np.random.default_rng(0).integers(0, demo.n_obs, 64)  # unsorted, with repeats
        assert same_csr(counts.read_cells(rows), demo.X[rows])
        assert same_csr(counts.read_cells([799, 0, 400, 401, 402]), demo.X[[799, 0, 400, 401, 402]])
        # increasing runs of rows (what a streamed buffer asks): near ones read as one slice and gathered, far ones
        # (more than MERGE_GAP values apart) and single runs read as they are
        for runs in (np.r_[100:150, 600:640, 700:702], np.r_[0:10, 790:800], np.arange(200, 260)):
            assert same_csr(counts.read_cells(runs), demo.X[runs])
        assert counts.read_cells([]).shape == (0, demo.n_vars)
        blocks = list(counts.blocks(128))
        assert [start for start, _ in blocks] == list(range(0, 800, 128))
        assert same_csr(sp.vstack([block for _, block in blocks]), demo.X)


def test_one_pass_statistics_equal_the_in_memory_counts(tmp_path):
    X = random_counts()
    noisy = X.copy()  # a plain .h5ad as anndata writes it: a stored zero must not count as open
    noisy.data[::17] = 0
    path = tmp_path / "plain.h5ad"
    anndata.AnnData(X=noisy).write_h5ad(path)
    with open_store(path) as counts:
        stats = counts.statistics(block_cells=33)
    clean = pp.stored_nonzero(noisy)
    assert np.array_equal(stats.cells_per_peak, np.bincount(clean.indices, minlength=X.shape[1]))
    assert np.array_equal(stats.peaks_per_cell, np.diff(clean.indptr))
    assert np.array_equal(stats.peak_max, np.asarray(abs(noisy).max(axis=0).todense()).ravel())


@pytest.mark.parametrize("layout", ["h5ad", "dense_h5ad", "csc_h5ad", "10x_h5", "multiome_h5", "folder"])
def test_conversion_gives_what_scatac_read_gives(demo, tmp_path, layout):
    """Streamed (an .h5ad's CSR or dense X, a 10x .h5) or read whole (a CSC X, a folder): the same counts."""
    if layout.endswith("h5ad"):
        source = tmp_path / "demo.h5ad"
        adata = demo.copy()
        if layout == "dense_h5ad":
            adata.X = adata.X.toarray()
        elif layout == "csc_h5ad":
            adata.X = sp.csc_matrix(adata.X)
        adata.write_h5ad(source)
    elif layout == "folder":
        source = DEMO
    else:
        genes = 20 if layout == "multiome_h5" else 0
        # genes all expressed: columns the store must leave out
        X = sp.hstack([sp.csr_matrix(np.ones((demo.n_obs, genes), dtype=np.float32)), demo.X]).tocsr()
        source = tmp_path / "filtered_peak_bc_matrix.h5"
        write_10x_h5(source, X, list(demo.obs_names), [f"gene{i}" for i in range(genes)] + list(demo.var_names),
                     ["Gene Expression"] * genes + ["Peaks"] * demo.n_vars)
    labels = DEMO / "labels.txt" if layout != "h5ad" else None
    label_key = "label" if layout == "h5ad" else None
    store = convert_to_store(source, tmp_path / "out.h5ad", block_cells=71, labels=labels, label_key=label_key,
                             progress=False)
    expected = scatac.read(source, labels=labels, label_key=label_key, verbose=False)
    adata = anndata.read_h5ad(store)
    assert same_csr(adata.X, expected.X)
    assert list(adata.obs_names) == list(expected.obs_names) and list(adata.var_names) == list(expected.var_names)
    assert list(adata.obs["label"]) == list(demo.obs["label"])
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_a_failed_write_leaves_the_earlier_store_and_no_staging_file(demo, tmp_path):
    path = tmp_path / "store.h5ad"
    X = demo.X
    write_store([X], path, barcodes=list(demo.obs_names), peaks=list(demo.var_names), progress=False)
    before = path.read_bytes()

    def broken_blocks():
        yield X[:100]
        raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError, match="disk went away"):
        write_store(broken_blocks(), path, barcodes=list(demo.obs_names), peaks=list(demo.var_names), progress=False)
    with pytest.raises(ValueError, match="hold 100 cells"):  # fewer rows than barcodes
        write_store([X[:100]], path, barcodes=list(demo.obs_names), peaks=list(demo.var_names), progress=False)
    negative = demo.copy()
    negative.X = negative.X.copy()
    negative.X.data[-1] = -1  # in the last block: found only after most of the store was written
    negative.write_h5ad(tmp_path / "negative.h5ad")
    with pytest.raises(InputError, match="negative values") as error:
        convert_to_store(tmp_path / "negative.h5ad", path, block_cells=64, progress=False)
    assert error.value.where == str(tmp_path / "negative.h5ad")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["negative.h5ad", "store.h5ad"]


def test_bad_inputs_are_input_errors_naming_the_file(demo, tmp_path):
    text = tmp_path / "counts.txt"
    text.write_text("not a store\n")
    dense = tmp_path / "dense.h5ad"
    anndata.AnnData(X=demo.X[:20].toarray()).write_h5ad(dense)
    tenx = tmp_path / "matrix.h5"
    write_10x_h5(tenx, demo.X[:20], list(demo.obs_names[:20]), list(demo.var_names), ["Peaks"] * demo.n_vars)
    for path, problem in ((text, "not a store"), (dense, "X is dense"), (tenx, "10x HDF5"),
                          (tmp_path / "missing.h5ad", "no such file")):
        with pytest.raises(InputError, match=problem) as error:
            open_store(path)
        assert error.value.where == str(path)
    with pytest.raises(InputError, match="no such file") as error:
        convert_to_store(tmp_path / "missing.h5ad", tmp_path / "out.h5ad", progress=False)
    assert error.value.where == str(tmp_path / "missing.h5ad")
    with pytest.raises(InputError, match="has no layer 'counts'"):
        convert_to_store(dense, tmp_path / "out.h5ad", layer="counts", progress=False)
    assert not (tmp_path / "out.h5ad").exists()


# ---- transforms split into a per-peak fit and a per-block apply ---------------------------------------------------


def fitted(X, kind):
    clean = pp.stored_nonzero(X)
    peak_max = np.zeros(X.shape[1])
    np.maximum.at(peak_max, clean.indices, np.abs(clean.data))
    return pp.peak_weights(kind, np.bincount(clean.indices, minlength=X.shape[1]), X.shape[0], peak_max)


@pytest.mark.parametrize("kind", TRANSFORMS)
@pytest.mark.parametrize("matrix", ["random", "demo"])
def test_transform_rows_with_peak_weights_is_transform(demo, kind, matrix):
    X = random_counts() if matrix == "random" else demo.X
    weights = fitted(X, kind)
    whole = pp.transform(X, kind)
    assert same_csr(pp.transform_rows(X, kind, weights), whole)
    blocks = sp.vstack([pp.transform_rows(X[i:i + 37], kind, weights) for i in range(0, X.shape[0], 37)], format="csr")
    assert same_csr(blocks, whole)


# ---- cell data over a store ----------------------------------------------------------------------------------------


# each case drops something else: rare peaks; cells, then peaks only they opened; all but the top peaks, then the
# cells with none of those; nothing but never-open peaks (the second pass skipped)
@pytest.mark.parametrize("thresholds, dropped", [
    ({}, "peaks_dropped_rare"),
    ({"min_cells_per_peak": 1, "min_peaks_per_cell": 150}, "peaks_dropped_empty_after_cell_filter"),
    ({"max_cells_per_peak": 0.2, "n_top_peaks": 20}, "cells_dropped_no_top_peak"),
    ({"min_cells_per_peak": 0, "min_peaks_per_cell": 0}, "peaks_dropped_empty_after_cell_filter")])
def test_the_filter_over_blocks_is_pp_filter(demo, demo_store, thresholds, dropped):
    from scatac.streamed import filter_store

    with open_store(demo_store) as counts:
        cell_mask, peak_mask, summary = filter_store(counts, **{**dict(min_cells_per_peak=3, max_cells_per_peak=1.0,
                                                                       min_peaks_per_cell=10), **thresholds},
                                                     block_cells=50)
    expected = pp.filter_masks(demo.X, **thresholds)
    assert np.array_equal(cell_mask, expected[0]) and np.array_equal(peak_mask, expected[1])
    assert summary == expected[2] and summary[dropped] > 0


@pytest.mark.parametrize("kind", TRANSFORMS)
def test_stored_data_batches_are_the_in_memory_batches(demo, demo_store, kind):
    from scatac.streamed import StoredData

    thresholds = dict(min_cells_per_peak=40, min_peaks_per_cell=0.05)
    data = StoredData.filtered(demo_store, kind, **thresholds, block_cells=64)
    cell_mask, peak_mask, _ = pp.filter_masks(demo.X, **thresholds)
    memory = TrainData.from_counts(demo.X[cell_mask][:, peak_mask], kind)
    assert (data.n_cells, data.n_peaks, data.nnz) == (memory.n_cells, memory.n_peaks, memory.nnz)
    assert np.array_equal(data.depth, memory.depth) and np.array_equal(data.open_fraction(), memory.open_fraction())
    assert data.neighbors is None
    device = torch.device("cpu")
    rows = np.random.default_rng(1).permutation(data.n_cells)[:70]
    batch = data.batch(rows, device)
    assert np.array_equal(batch.rows, rows)
    assert same_batch(batch, memory.batch(rows, device))
    assert same_batch(data.batch(np.arange(10, 60), device), memory.batch(np.arange(10, 60), device))
    assert list(data.obs_names) == list(demo.obs_names[cell_mask])


# ---- streamed batches ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(demo_store):
    from scatac.streamed import StoredData

    return StoredData(demo_store, "tfidf")


def epoch_rows(source, epoch=0):
    return [batch.rows.copy() for batch, neighbor_batch in source.epoch(epoch) if neighbor_batch is None]


def test_an_epoch_streams_every_cell_once_in_full_batches(stored):
    from scatac.streamed import StreamedBatches

    device = torch.device("cpu")
    for prefetch in (True, False):
        source = StreamedBatches(stored, 48, device, seed=3, block_cells=50, buffer_blocks=3, prefetch=prefetch)
        batches = list(source.epoch(0))
        rows = [batch.rows for batch, _ in batches]
        assert len(rows) == source.batches_per_epoch == -(-800 // 48)
        assert all(len(r) == 48 for r in rows[:-1]) and len(rows[-1]) == 800 - 48 * (len(rows) - 1)
        assert np.array_equal(np.sort(np.concatenate(rows)), np.arange(800))
        assert all(neighbor_batch is None for _, neighbor_batch in batches)
        # a batch holds the cells it names, read and transformed as StoredData.batch reads them
        for batch, _ in (batches[0], batches[5], batches[-1]):
            assert same_batch(batch, stored.batch(batch.rows, device))
    # cells of one batch come from at most a buffer's blocks (and the one before it), not from the whole store
    assert len(np.unique(rows[1] // 50)) <= 6


def test_the_order_is_the_seeds_and_the_epochs(stored):
    from scatac.streamed import StreamedBatches

    def order(seed, epoch):
        source = StreamedBatches(stored, 64, torch.device("cpu"), seed=seed, block_cells=40, buffer_blocks=2)
        return np.concatenate(epoch_rows(source, epoch))

    assert np.array_equal(order(0, 1), order(0, 1))
    assert not np.array_equal(order(0, 1), order(1, 1))
    assert not np.array_equal(order(0, 1), order(0, 2))
    source = StreamedBatches(stored, 64, torch.device("cpu"), seed=0, block_cells=40, buffer_blocks=2)
    epoch_rows(source, 0)  # an epoch drawn before does not change the next one's order
    assert np.array_equal(np.concatenate(epoch_rows(source, 1)), order(0, 1))


def test_shards_are_disjoint_cover_the_cells_and_take_as_many_steps(stored):
    from scatac.streamed import StreamedBatches

    world_size = 3
    shards = [StreamedBatches(stored, 32, torch.device("cpu"), seed=5, block_cells=60, shard=(rank, world_size))
              for rank in range(world_size)]
    # 14 blocks (13 of 60 cells and one of 20): ranks hold 300, 260 and 240 cells
    assert [shard.batches_per_epoch for shard in shards] == [8] * world_size
    seen = [np.concatenate(epoch_rows(shard)) for shard in shards]
    assert [len(rows) for rows in seen] == [256, 256, 240]
    for rank, rows in enumerate(seen):
        assert set(np.unique(rows // 60) % world_size) == {rank}
        assert len(np.unique(rows)) == len(rows)
    assert not set(seen[0]) & set(seen[1]) and not set(seen[1]) & set(seen[2]) and not set(seen[0]) & set(seen[2])
    # without the steps' limit, the shards' blocks are all the cells
    whole = [StreamedBatches(stored, 1000, torch.device("cpu"), seed=5, block_cells=60, shard=(rank, world_size))
             for rank in range(world_size)]
    assert [w.batches_per_epoch for w in whole] == [1, 1, 1]
    assert np.array_equal(np.sort(np.concatenate([np.concatenate(epoch_rows(w)) for w in whole])), np.arange(800))


def test_training_rows_and_max_batches(stored):
    from scatac.streamed import StreamedBatches

    training = np.random.default_rng(0).permutation(800)[:500]
    source = StreamedBatches(stored, 64, torch.device("cpu"), seed=0, rows=training, block_cells=100)
    assert source.n_cells == 500 and source.batches_per_epoch == 8
    assert np.array_equal(np.sort(np.concatenate(epoch_rows(source))), np.sort(training))
    limited = StreamedBatches(stored, 64, torch.device("cpu"), seed=0, rows=training, block_cells=100, max_batches=3)
    batches = epoch_rows(limited)
    assert len(batches) == 3 and limited.batches_per_epoch == 8
    assert all(np.isin(rows, training).all() for rows in batches)


def test_the_trainers_hook_gives_this_processes_shard(stored):
    from types import SimpleNamespace

    stored.stream_block_cells = 100
    try:
        sources = [stored.streamed_batches(batch_size=50, seed=2, device=torch.device("cpu"),
                                           world=SimpleNamespace(rank=rank, size=2), max_batches=None)
                   for rank in range(2)]
    finally:
        del stored.stream_block_cells  # back to the class's default
    assert [source.batches_per_epoch for source in sources] == [8, 8]
    seen = [np.concatenate(epoch_rows(source)) for source in sources]
    block = sources[0].block_cells  # 50: at least 8 blocks a rank (streamed.MIN_BLOCKS_PER_RANK)
    assert block == 50
    assert [set(np.unique(rows // block) % 2) for rows in seen] == [{0}, {1}]
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(800))


# ---- a simulated store ---------------------------------------------------------------------------------------------


def test_a_simulated_store_has_its_types_density_and_no_dependence_on_block_size(tmp_path):
    from scatac.simulate import SIMULATE_CHUNK_CELLS, simulate_store

    n_cells, n_peaks, density = SIMULATE_CHUNK_CELLS + 1000, 2000, 0.02
    first = simulate_store(tmp_path / "a.h5ad", n_cells, n_peaks, density, n_types=3, seed=4, progress=False)
    second = simulate_store(tmp_path / "b.h5ad", n_cells, n_peaks, density, n_types=3, seed=4, block_cells=1,
                            progress=False)
    other = simulate_store(tmp_path / "c.h5ad", n_cells, n_peaks, density, n_types=3, seed=5, progress=False)
    a, b, c = (anndata.read_h5ad(path) for path in (first, second, other))
    assert a.shape == (n_cells, n_peaks) and set(a.X.data) == {1}
    assert same_csr(a.X, b.X) and list(a.obs["label"]) == list(b.obs["label"])
    assert not same_csr(a.X, c.X)
    open_peaks = np.diff(a.X.indptr)
    assert abs(open_peaks.mean() / (density * n_peaks) - 1) < 0.05 and open_peaks.std() > 5
    assert sorted(set(a.obs["label"])) == ["type_A", "type_B", "type_C"]
    # each type opens its own peaks: the types' mean profiles are further apart than two halves of one type
    profile = {t: np.asarray(a.X[np.flatnonzero(a.obs["label"] == t)].mean(axis=0)).ravel() for t in ("type_A", "type_B")}
    cells_a = np.flatnonzero(a.obs["label"] == "type_A")
    half = [np.asarray(a.X[cells].mean(axis=0)).ravel() for cells in (cells_a[::2], cells_a[1::2])]
    assert np.abs(profile["type_A"] - profile["type_B"]).sum() > 2 * np.abs(half[0] - half[1]).sum()


def test_an_autoencoder_trains_streamed_from_a_backed_store(tmp_path):
    """tl.ae on a backed AnnData reads the store in blocks: every cell gets features, the neighbour term is off."""
    import anndata
    import torch

    import scatac
    from scatac.simulate import simulate_store
    from scatac.train import Trainer

    path = simulate_store(tmp_path / "cells.h5ad", 1500, 800, 0.03, n_types=3, progress=False) or tmp_path / "cells.h5ad"
    adata = anndata.read_h5ad(path, backed="r")
    trainer = Trainer(device=torch.device("cpu"), progress=False)
    scatac.tl.ae(adata, 4, trainer=trainer, epochs=4, hidden_dims=(32,), decoder="sampled")
    features = adata.obsm["X_AE"]
    assert features.shape == (1500, 4) and np.isfinite(features).all()
    assert adata.uns["AE"]["params"]["neighbor_weight"] == 0 and adata.uns["AE"]["decoder"] == "sampled"
    assert trainer.calls[-1]["n_cells"] == 1500
    scores = scatac.tl.cluster(adata, use_rep="X_AE", labels_key="label")
    assert scores["ARI"] > 0.3  # three simulated types, far above chance (0)
    with pytest.raises(InputError, match="backed by the on-disk store"):
        scatac.pp.filter(adata)
