"""Fragment files as input (issue 14): counts as SnapATAC2's make_peak_matrix makes them, on a fragment file from the
project's simulator whose counts are known exactly."""
import gzip

import pytest

import scatac
from conftest import run_in_process
from scatac.errors import InputError
from scatac.io.fragments import count_fragments
from scatac.simulate import simulate_atac, simulate_fragments

STRATEGIES = ("paired-insertion", "insertion", "fragment")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A Cell Ranger-style fragments.tsv.gz (10x's layout: chrom, start, end, barcode, count; '#' header lines) of
    300 cells and 50 empty droplets, its peaks.bed, and the counts each strategy must give."""
    folder = tmp_path_factory.mktemp("fragments")
    X, labels, barcodes, peaks = simulate_atac(300, 400, 3, density=0.05, seed=1)
    bed = folder / "peaks.bed"
    bed.write_text("".join("{}\t{}\t{}\n".format(p.split(":")[0], *p.split(":")[1].split("-")) for p in peaks))
    expected = simulate_fragments(folder / "fragments.tsv.gz", X, barcodes, peaks, n_empty_barcodes=50)
    return folder, barcodes, peaks, expected, labels


@pytest.mark.parametrize("counting", STRATEGIES)
def test_counts_are_the_simulated_ones_for_each_strategy(simulated, counting):
    folder, barcodes, peaks, expected, _ = simulated
    adata = scatac.read(folder / "fragments.tsv.gz", peaks=folder / "peaks.bed", min_fragments=5, counting=counting)
    assert sorted(adata.obs_names) == sorted(barcodes)  # the 50 empty droplets (< 5 fragments) are not cells
    assert list(adata.var_names) == peaks
    rows = [barcodes.index(b) for b in adata.obs_names]
    assert (adata.X != expected[counting][rows]).nnz == 0


def test_reading_in_small_chunks_gives_the_same_counts(simulated):
    folder, *_ = simulated
    whole = count_fragments(folder / "fragments.tsv.gz", folder / "peaks.bed", min_fragments=5, progress=False)
    chunked = count_fragments(folder / "fragments.tsv.gz", folder / "peaks.bed", min_fragments=5, chunk_lines=997,
                              progress=False)
    assert whole[1] == chunked[1] and whole[2] == chunked[2] and (whole[0] != chunked[0]).nnz == 0


def test_barcodes_file_picks_the_cells_in_its_order(simulated, tmp_path, capsys):
    folder, barcodes, *_ = simulated
    chosen = barcodes[10:20][::-1] + ["not_a_cell"]
    (tmp_path / "cells.txt").write_text("\n".join(chosen) + "\n")
    adata = scatac.read(folder / "fragments.tsv.gz", peaks=folder / "peaks.bed", barcodes=tmp_path / "cells.txt")
    assert list(adata.obs_names) == chosen[:-1]
    assert "1 of 11 barcodes have no fragment" in capsys.readouterr().err


def test_tiles_count_every_insertion(simulated):
    folder, barcodes, *_ = simulated
    adata = scatac.read(folder / "fragments.tsv.gz", tile_size=500, min_fragments=5, counting="insertion")
    with gzip.open(folder / "fragments.tsv.gz", "rt") as handle:
        lines = [line.split("\t") for line in handle if not line.startswith("#")]
    cells = set(barcodes)
    assert adata.X.sum() == 2 * sum(fields[3] in cells for fields in lines)
    chrom, span = adata.var_names[0].split(":")
    start, end = map(int, span.split("-"))
    assert chrom == "chr1" and end - start == 500 and start % 500 == 0


def test_overlapping_peaks_each_count(tmp_path):
    (tmp_path / "peaks.bed").write_text("chr1\t100\t300\nchr1\t200\t400\nchr1\t1000\t1100\n")
    (tmp_path / "fragments.tsv").write_text("chr1\t250\t260\tAAA\t1\nchr1\t150\t1050\tAAA\t1\n")
    X, cells, names, _ = count_fragments(tmp_path / "fragments.tsv", tmp_path / "peaks.bed", min_fragments=1,
                                         counting="insertion", progress=False)
    # insertions at 250 and 259 (both peaks hold them), 150 (the first) and 1049 (the third)
    assert X.toarray().tolist() == [[3, 2, 1]] and cells == ["AAA"]
    X, *_ = count_fragments(tmp_path / "fragments.tsv", tmp_path / "peaks.bed", min_fragments=1, counting="fragment",
                            progress=False)
    assert X.toarray().tolist() == [[2, 2, 1]]


@pytest.mark.parametrize("content, options, words", [
    ("chr1\t100\t200\tAAA\t1\n", {}, "needs --peaks PEAKS.bed or --tile-size"),
    ("chr1\t300\t200\tAAA\t1\n", {"tile_size": 500}, "end is not after its start"),
    ("chr1\tx\t200\tAAA\t1\n", {"tile_size": 500}, "cannot be parsed as a fragment file"),
    ("chr1\t100\t200\tAAA\t1\n", {"tile_size": 500, "min_fragments": 5}, "no barcode has >= 5 fragments"),
])
def test_broken_fragment_input_is_one_error(tmp_path, content, options, words):
    (tmp_path / "fragments.tsv").write_text(content)
    with pytest.raises(InputError, match=words):
        scatac.read(tmp_path / "fragments.tsv", **options)


def test_fragment_options_on_a_count_matrix_are_refused(tmp_path):
    from conftest import DEMO

    with pytest.raises(InputError, match="--peaks applies to fragment files"):
        scatac.read(DEMO, peaks=tmp_path / "peaks.bed")
    with pytest.raises(InputError, match="--barcodes applies to fragment files"):
        scatac.read(DEMO / "matrix.mtx.gz", barcodes=DEMO / "barcodes.txt")


def test_a_fragment_file_of_any_name_is_read_when_given_peaks(simulated, tmp_path):
    folder, barcodes, *_ = simulated
    (tmp_path / "sample1.tsv.gz").write_bytes((folder / "fragments.tsv.gz").read_bytes())
    adata = scatac.read(tmp_path / "sample1.tsv.gz", peaks=folder / "peaks.bed", min_fragments=5)
    assert sorted(adata.obs_names) == sorted(barcodes)


def test_a_script_trains_on_a_fragment_file(simulated, tmp_path):
    folder, barcodes, peaks, _, labels = simulated
    (tmp_path / "labels.txt").write_text("".join(f"{b}\t{label}\n" for b, label in zip(barcodes, labels)))
    done = run_in_process("AE.py", 2, folder / "fragments.tsv.gz", tmp_path / "out", 4, tmp_path / "labels.txt",
                          "--peaks", folder / "peaks.bed", "--min-fragments", 5, "--no-umap", "--threads", "1",
                          "--hidden-dims", "32")
    assert done.returncode == 0, done.stderr
    assert "300 of 350 barcodes have >= 5 fragments" in done.stderr
    assert len((tmp_path / "out" / "feature.txt").read_text().splitlines()) > 250


def test_the_same_counts_as_snapatac2(simulated, tmp_path):
    """SnapATAC2's own import_fragments + make_peak_matrix and add_tile_matrix on the same file, each strategy
    (needs snapatac2)."""
    snap = pytest.importorskip("snapatac2")
    folder, barcodes, peaks, _, _ = simulated
    sizes = {f"chr{i}": 10_000_000 for i in range(1, 23)}
    data = snap.pp.import_fragments(str(folder / "fragments.tsv.gz"), chrom_sizes=sizes, min_num_fragments=5,
                                    sorted_by_barcode=False)
    for counting in STRATEGIES:
        theirs = snap.pp.make_peak_matrix(data, peak_file=str(folder / "peaks.bed"), counting_strategy=counting)
        ours = scatac.read(folder / "fragments.tsv.gz", peaks=folder / "peaks.bed", min_fragments=5, counting=counting)
        ours = ours[list(theirs.obs_names)]
        assert list(theirs.var_names) == list(ours.var_names)
        assert abs(ours.X - theirs.X).sum() == 0, counting
        # Tiles: SnapATAC2 holds every 500 bp bin of the genome, we hold the bins any fragment touched.
        theirs = snap.pp.add_tile_matrix(data, bin_size=500, counting_strategy=counting, inplace=False)
        ours = scatac.read(folder / "fragments.tsv.gz", tile_size=500, min_fragments=5, counting=counting)
        ours = ours[list(theirs.obs_names)]
        touched = theirs[:, list(ours.var_names)].X
        assert abs(ours.X - touched).sum() == 0 and touched.sum() == theirs.X.sum(), counting


@pytest.mark.parametrize("options", [
    {"min_fragments": 5},
    {"min_fragments": 5, "counting": "fragment"},
    {"tile_size": 500, "min_fragments": 5},
])
def test_a_store_of_a_fragment_file_is_streamed_and_holds_what_read_gives(simulated, tmp_path, options):
    """convert_to_store counts a fragment file in two passes into blocks of cells (a few cells a block here, so that
    blocks, chunks and tiles first touched in later chunks all meet), never the whole matrix; the store is what
    scatac.read gives, cells, features and counts; the blocks' temporary hits are gone afterwards."""
    import anndata

    from scatac.io import fragments

    folder, *_ = simulated
    options = {"peaks": folder / "peaks.bed", **options} if "tile_size" not in options else options
    whole = fragments.count_fragments
    fragments.count_fragments = None  # the store must not count the file whole
    try:
        store = scatac.io.convert_to_store(folder / "fragments.tsv.gz", tmp_path / "f.store.h5ad", block_cells=37,
                                           progress=False, **options)
    finally:
        fragments.count_fragments = whole
    expected = scatac.read(folder / "fragments.tsv.gz", verbose=False, **options)
    stored = anndata.read_h5ad(store)
    assert list(stored.obs_names) == list(expected.obs_names) and list(stored.var_names) == list(expected.var_names)
    assert (stored.X != expected.X).nnz == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.store.h5ad"]


def test_small_chunks_and_a_barcodes_file_give_the_same_blocks(simulated, tmp_path):
    from scatac.io.fragments import partition_fragments

    folder, barcodes, *_ = simulated
    chosen = tmp_path / "cells.txt"
    chosen.write_text("\n".join(barcodes[::-3] + ["not-a-barcode"]) + "\n")
    (tmp_path / "hits").mkdir()
    cells, features, notes, blocks = partition_fragments(folder / "fragments.tsv.gz", tmp_path / "hits",
                                                         peaks=folder / "peaks.bed", barcodes=chosen, block_cells=16,
                                                         chunk_lines=997, progress=False)
    X, whole_cells, whole_features, whole_notes = count_fragments(folder / "fragments.tsv.gz", folder / "peaks.bed",
                                                                  barcodes=chosen, progress=False)
    assert cells == whole_cells == barcodes[::-3] and features == whole_features and notes == whole_notes
    import scipy.sparse as sp

    for _ in range(2):  # a second pass reads the same blocks again
        parts = list(blocks())
        assert [p.shape[0] for p in parts[:-1]] == [16] * (len(parts) - 1)
        assert (sp.vstack(parts).tocsr() != X).nnz == 0


def test_a_filtered_store_of_a_fragment_file_is_the_filtered_read(simulated, tmp_path):
    folder, *_ = simulated
    filter = {"min_cells_per_peak": 20, "min_peaks_per_cell": 30}
    store, reused = scatac.io.store.filtered_store(tmp_path / "f.store.h5ad", folder / "fragments.tsv.gz",
                                                   filter=filter, progress=False, peaks=folder / "peaks.bed",
                                                   min_fragments=5)
    expected = scatac.read(folder / "fragments.tsv.gz", peaks=folder / "peaks.bed", min_fragments=5, verbose=False)
    scatac.pp.filter(expected, **filter)
    import anndata

    stored = anndata.read_h5ad(store)
    assert not reused and stored.n_obs < 300 and stored.n_vars < 400  # the filter did drop cells and peaks
    assert list(stored.obs_names) == list(expected.obs_names) and list(stored.var_names) == list(expected.var_names)
    assert (stored.X != expected.X).nnz == 0
