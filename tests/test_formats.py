"""Inputs as users have them (issue 14): each file laid out as the tool that writes it documents, read into the
same counts as the demo's own folder."""
import gzip
import shutil

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import scatac
from conftest import DEMO, run_in_process
from scatac.errors import InputError

GENES = 50  # Gene Expression features beside the peaks in a Multiome file


@pytest.fixture(scope="module")
def demo():
    return scatac.read(DEMO)


def same_counts(adata, demo, peaks=None):
    expected = demo if peaks is None else demo[:, peaks]
    assert adata.shape == expected.shape
    assert list(adata.obs_names) == list(expected.obs_names) and list(adata.var_names) == list(expected.var_names)
    assert (adata.X != expected.X).nnz == 0


def multiome(demo, rng=np.random.default_rng(0)):
    """(counts cells x features, ids, types): genes first, then the peaks, as Cell Ranger ARC orders its features."""
    genes = sp.csr_matrix(rng.poisson(0.5, (demo.n_obs, GENES)).astype(np.float32))
    ids = [f"ENSG{i:011d}" for i in range(GENES)] + list(demo.var_names)
    return sp.hstack([genes, demo.X]).tocsr(), ids, ["Gene Expression"] * GENES + ["Peaks"] * demo.n_vars


def write_10x_h5(path, X, barcodes, ids, types):
    """Cell Ranger's feature-barcode matrix HDF5 (support.10xgenomics.com, "HDF5 Feature-Barcode Matrix Format"):
    /matrix with CSC features x cells (data, indices, indptr, shape), barcodes and features/{id,name,feature_type,genome}."""
    import h5py

    csc = sp.csr_matrix(X).T.tocsc()
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["barcodes"] = np.array(barcodes, dtype="S")
        group["data"] = csc.data.astype(np.int32)
        group["indices"] = csc.indices.astype(np.int64)
        group["indptr"] = csc.indptr.astype(np.int64)
        group["shape"] = np.array(csc.shape, dtype=np.int32)
        features = group.create_group("features")
        for key, values in (("id", ids), ("name", ids), ("feature_type", types), ("genome", ["GRCh38"] * len(ids))):
            features[key] = np.array(values, dtype="S")


def write_mex(folder, X, barcodes, ids, types):
    """Cell Ranger ARC's filtered_feature_bc_matrix/ folder: matrix.mtx.gz (features x cells), barcodes.tsv.gz and a
    six-column features.tsv.gz (id, name, feature_type, chrom, start, end)."""
    folder.mkdir(parents=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, sp.coo_matrix(X.T.astype(np.int32)), field="integer")
    with gzip.open(folder / "features.tsv.gz", "wt") as handle:
        for feature, kind in zip(ids, types):
            handle.write(f"{feature}\t{feature}\t{kind}\tchr1\t100\t200\n")
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as handle:
        handle.write("\n".join(barcodes) + "\n")


@pytest.mark.parametrize("layout", ["h5", "mex"])
def test_a_multiome_file_gives_its_peaks_only(demo, tmp_path, capsys, layout):
    X, ids, types = multiome(demo)
    path = tmp_path / ("filtered_feature_bc_matrix.h5" if layout == "h5" else "filtered_feature_bc_matrix")
    (write_10x_h5 if layout == "h5" else write_mex)(path, X, list(demo.obs_names), ids, types)
    same_counts(scatac.read(path), demo)
    assert f"set aside {GENES} Gene Expression features, kept the 3,000 Peaks" in capsys.readouterr().err


def test_a_gene_expression_file_is_refused(demo, tmp_path):
    X, ids, types = multiome(demo)
    path = tmp_path / "rna.h5"
    write_10x_h5(path, X[:, :GENES], list(demo.obs_names), ids[:GENES], types[:GENES])
    with pytest.raises(InputError, match="has no 'Peaks' features"):
        scatac.read(path)


def test_bed_header_and_track_lines_are_not_peaks(demo, tmp_path):
    """UCSC BED: 'browser' and 'track' lines and '#' comments may precede the intervals (genome.ucsc.edu/FAQ/FAQformat)."""
    folder = tmp_path / "peaks_bed"
    shutil.copytree(DEMO, folder)
    peaks = (folder / "peaks.txt").read_text().split()
    (folder / "peaks.txt").unlink()
    bed = ["# peaks called by MACS2", "browser position chr1:1-1000", 'track name=peaks description="open chromatin"']
    bed += ["\t".join([p.split(":")[0], *p.split(":")[1].split("-")]) for p in peaks]
    (folder / "peaks.bed").write_text("\n".join(bed) + "\n")
    same_counts(scatac.read(folder), demo)


def test_scales_documented_folder_is_read(demo, tmp_path):
    """SCALE's README: a folder with count.mtx, peak.txt and barcode.txt."""
    folder = tmp_path / "scale"
    folder.mkdir()
    (folder / "count.mtx").write_bytes(gzip.decompress((DEMO / "matrix.mtx.gz").read_bytes()))
    shutil.copy(DEMO / "peaks.txt", folder / "peak.txt")
    shutil.copy(DEMO / "barcodes.txt", folder / "barcode.txt")
    same_counts(scatac.read(folder), demo)


def normalized_with_counts(demo):
    """muon / Signac's habit: TF-IDF in X, the counts in layers['counts']."""
    adata = demo.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = scatac.pp.tfidf(adata.X)
    return adata


def test_a_normalized_x_warns_and_names_the_counts_layer(demo, tmp_path, capsys):
    path = tmp_path / "signac.h5ad"
    normalized_with_counts(demo).write_h5ad(path)
    scatac.read(path)
    err = capsys.readouterr().err
    assert "X holds non-integer values" in err and "--layer counts" in err
    adata = scatac.read(path, layer="counts")
    same_counts(adata, demo)
    assert "warning" not in capsys.readouterr().err
    with pytest.raises(InputError, match="has no layer 'raw'"):
        scatac.read(path, layer="raw")


def test_an_x_that_disagrees_with_scanpys_total_counts_warns(demo, tmp_path, capsys):
    """scanpy's calculate_qc_metrics leaves obs['total_counts']; X binarized afterwards is no longer those counts."""
    adata = demo.copy()
    adata.obs["total_counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(tmp_path / "qc.h5ad")
    scatac.read(tmp_path / "qc.h5ad")
    assert "warning" not in capsys.readouterr().err  # X still the counts
    adata.X.data[:] = 1
    adata.write_h5ad(tmp_path / "binarized.h5ad")
    scatac.read(tmp_path / "binarized.h5ad")
    err = capsys.readouterr().err
    assert "holds only 0/1 where obs['total_counts'] counts more per cell" in err and "--layer counts" in err


def test_the_layer_option_on_a_script(demo, tmp_path):
    path = tmp_path / "signac.h5ad"
    normalized_with_counts(demo).write_h5ad(path)
    done = run_in_process("AE.py", 2, path, tmp_path / "out", 4, "--layer", "counts", "--no-umap", "--threads", "1",
                          "--hidden-dims", "32")
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    done = run_in_process("AE.py", 2, DEMO, tmp_path / "out2", 4, "--layer", "counts")
    assert done.returncode == 2 and done.stderr.strip().endswith("--layer applies to AnnData .h5ad and MuData .h5mu files")


def write_h5mu(path, modalities: dict):
    """MuData's .h5mu (mudata.readthedocs.io, "MuData on disk"): an HDF5 file whose /mod/<name> groups each hold an
    AnnData in anndata's own encoding, beside the joint obs and var."""
    import anndata
    import h5py

    with h5py.File(path, "w") as handle:
        handle.attrs["encoding-type"] = "MuData"
        handle.attrs["encoding-version"] = "0.1.0"
        mod = handle.create_group("mod")
        for name, adata in modalities.items():
            anndata.io.write_elem(mod, name, adata)


def test_an_h5mu_gives_its_atac_modality(demo, tmp_path):
    rna = demo[:, :10].copy()
    rna.var_names = [f"gene{i}" for i in range(10)]
    path = tmp_path / "multiome.h5mu"
    write_h5mu(path, {"rna": rna, "atac": demo})
    same_counts(scatac.read(path), demo)
    assert scatac.read(path, modality="rna").shape == (demo.n_obs, 10)
    with pytest.raises(InputError, match="has no modality 'peaks' .it has: atac, rna"):
        scatac.read(path, modality="peaks")


def test_a_blosc_compressed_h5ad_as_snapatac2_writes_it(demo, tmp_path):
    """SnapATAC2 writes its AnnData files with Blosc-compressed datasets (HDF5 filter 32001)."""
    hdf5plugin = pytest.importorskip("hdf5plugin")
    import h5py

    path = tmp_path / "snap.h5ad"
    demo.write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        for key in ("data", "indices"):
            values = handle["X"][key][()]
            del handle["X"][key]
            handle["X"].create_dataset(key, data=values, **hdf5plugin.Blosc(cname="zstd"))
        assert "32001" in handle["X"]["data"]._filters  # Blosc
    same_counts(scatac.read(path), demo)


def test_var_selected_is_honoured_when_asked(demo, tmp_path):
    adata = demo.copy()
    selected = np.zeros(adata.n_vars, dtype=bool)
    selected[::3] = True
    adata.var["selected"] = selected
    path = tmp_path / "selected.h5ad"
    adata.write_h5ad(path)
    same_counts(scatac.read(path), demo)
    same_counts(scatac.read(path, use_selected=True), demo, peaks=np.flatnonzero(selected))
    demo.write_h5ad(tmp_path / "plain.h5ad")
    with pytest.raises(InputError, match="no 'selected' column"):
        scatac.read(tmp_path / "plain.h5ad", use_selected=True)


def test_n_top_peaks_keeps_the_most_often_open(demo):
    adata = demo.copy()
    summary = scatac.pp.filter(adata, n_top_peaks=500)
    assert adata.n_vars == 500 and summary["peaks_dropped_not_top"] > 0
    everything = demo.copy()
    scatac.pp.filter(everything)
    open_in = np.asarray((everything.X > 0).sum(axis=0)).ravel()
    kept = np.isin(everything.var_names, adata.var_names)
    assert open_in[kept].min() >= open_in[~kept].max()
    with pytest.raises(InputError, match="n_top_peaks: must be an integer >= 1"):
        scatac.pp.filter(demo.copy(), n_top_peaks=0)


def test_result_h5ad_keeps_the_inputs_columns_peak_coordinates_and_colours(demo, tmp_path):
    import anndata

    adata = demo.copy()
    adata.obs["sample"] = np.where(np.arange(adata.n_obs) % 2 == 0, "rep1", "rep2")
    adata.var["gc"] = np.linspace(0.3, 0.6, adata.n_vars)
    adata.obs["cell_type"] = scatac.read(DEMO, labels=DEMO / "labels.txt").obs["label"].to_numpy()
    path = tmp_path / "input.h5ad"
    adata.write_h5ad(path)
    done = run_in_process("AE.py", 2, path, tmp_path / "out", 4, "--label-key", "cell_type", "--no-umap", "--threads",
                          "1", "--hidden-dims", "32")
    assert done.returncode == 0, done.stderr
    result = anndata.read_h5ad(tmp_path / "out" / "result.h5ad")
    assert {"sample", "cell_type", "label", "cluster"} <= set(result.obs.columns)
    assert {"gc", "chrom", "start", "end"} <= set(result.var.columns)
    first = result.var_names[0]
    assert f"{result.var['chrom'].iloc[0]}:{result.var['start'].iloc[0]}-{result.var['end'].iloc[0]}" == first
    assert len(result.uns["label_colors"]) == len(result.obs["label"].cat.categories)
    assert all(c.startswith("#") and len(c) == 7 for c in result.uns["label_colors"])


def test_result_h5ad_keeps_a_factorizations_loadings(tmp_path):
    import anndata

    from scatac import export

    adata = scatac.read(DEMO, labels=DEMO / "labels.txt")
    scatac.pp.filter(adata)
    scatac.tl.nmf(adata, 4, max_iter=20)
    scatac.tl.cluster(adata, use_rep="X_NMF", labels_key="label")
    export.write_results(tmp_path, adata, "NMF", labels_key="label")
    result = anndata.read_h5ad(tmp_path / "result.h5ad")
    assert result.varm["NMF_loadings"].shape == (adata.n_vars, 4)
    assert np.allclose(result.varm["NMF_loadings"], adata.varm["NMF_loadings"])
