"""The suite's spine (issue 3): every input format parses to the same matrix, labels attach or fail clearly,
AE.py writes every output and they parse back, seeds reproduce, bad inputs give one error line and exit 2,
and the AE beats chance on real data."""
import gzip
import json
import shutil

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import common
import scatac
from scatac import cli, io, methods
from conftest import DEMO, read_scores, run_in_process, run_script, shared_path

N_CELLS = len((DEMO / "barcodes.txt").read_text().split())


# --------------------------------------------------------------------------
# Input formats
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    return scatac.read(DEMO)


def write_gz(path, text):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)


def write_mtx(path, X_cells_by_peaks, field="integer"):
    """Matrix Market peaks x cells, gzipped when the name ends in .gz."""
    coo = sp.coo_matrix(X_cells_by_peaks.T)
    if field == "integer":
        coo = coo.astype(np.int64)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            scipy.io.mmwrite(handle, coo, field=field)
    else:
        with open(path, "wb") as handle:
            scipy.io.mmwrite(handle, coo, field=field)


def build_10x_tsv(folder, ref, gz=True):
    folder.mkdir()
    write_mtx(folder / ("matrix.mtx.gz" if gz else "matrix.mtx"), ref.X)
    write_gz(folder / "barcodes.tsv.gz", "".join(f"{b}\n" for b in ref.obs_names))
    write_gz(folder / "features.tsv.gz", "".join(f"{p}\t{p}\tPeaks\n" for p in ref.var_names))
    return folder / ("matrix.mtx.gz" if gz else "matrix.mtx")


def build_scale(folder, ref):
    folder.mkdir()
    write_mtx(folder / "data.mtx", ref.X)
    (folder / "peaks.txt").write_text("".join(f"{p}\n" for p in ref.var_names))
    (folder / "cell_id.txt").write_text("".join(f"{b}\n" for b in ref.obs_names))
    return folder


def build_h5(path, ref):
    import h5py

    csc = ref.X.T.tocsc()  # peaks x cells, column-compressed: one column per cell
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["barcodes"] = np.array(list(ref.obs_names), dtype="S")
        group["data"] = csc.data.astype(np.int32)
        group["indices"] = csc.indices.astype(np.int64)
        group["indptr"] = csc.indptr.astype(np.int64)
        group["shape"] = np.array([ref.n_vars, ref.n_obs], dtype=np.int32)
        features = group.create_group("features")
        features["id"] = np.array(list(ref.var_names), dtype="S")
        features["name"] = np.array(list(ref.var_names), dtype="S")
    return path


def build_h5ad(path, ref, dense):
    import anndata
    import pandas as pd

    labels = [line.split("\t")[1] for line in (DEMO / "labels.txt").read_text().splitlines()]
    obs = pd.DataFrame({"cell_type": labels}, index=ref.obs_names.copy())
    X = ref.X.toarray() if dense else ref.X.copy()
    anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=ref.var_names.copy())).write_h5ad(path)
    return path


def build_table(path, ref):
    import pandas as pd

    table = pd.DataFrame(ref.X.T.toarray().astype(np.int32), index=list(ref.var_names), columns=list(ref.obs_names))
    table.to_csv(path, sep="," if ".csv" in path.name else "\t")
    return path


BUILDERS = {
    "10x mtx.gz + tsv.gz": lambda tmp, ref: build_10x_tsv(tmp / "tenx_gz", ref, gz=True),
    "10x mtx + tsv.gz": lambda tmp, ref: build_10x_tsv(tmp / "tenx", ref, gz=False),
    "SCALE folder": lambda tmp, ref: build_scale(tmp / "scale", ref),
    "Cell Ranger h5": lambda tmp, ref: build_h5(tmp / "filtered_peak_bc_matrix.h5", ref),
    "h5ad sparse": lambda tmp, ref: build_h5ad(tmp / "sparse.h5ad", ref, dense=False),
    "h5ad dense": lambda tmp, ref: build_h5ad(tmp / "dense.h5ad", ref, dense=True),
    "tsv table": lambda tmp, ref: build_table(tmp / "data.txt", ref),
    "csv.gz table": lambda tmp, ref: build_table(tmp / "data.csv.gz", ref),
}


def assert_same(adata, ref):
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32 and adata.X.has_canonical_format
    assert adata.X.shape == ref.X.shape
    assert (adata.X != ref.X).nnz == 0
    assert list(adata.obs_names) == list(ref.obs_names)
    assert list(adata.var_names) == list(ref.var_names)


def test_reference_is_cells_by_peaks(reference):
    assert reference.X.shape == (N_CELLS, len((DEMO / "peaks.txt").read_text().split()))
    assert reference.X.nnz > 0 and reference.X.dtype == np.float32


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_every_format_parses_to_the_same_matrix(kind, reference, tmp_path):
    path = BUILDERS[kind](tmp_path, reference)
    assert_same(scatac.read(path), reference)


def test_h5ad_label_key_reads_obs(reference, tmp_path):
    path = build_h5ad(tmp_path / "x.h5ad", reference, dense=False)
    adata = scatac.read(path, label_key="cell_type")
    expected = [line.split("\t")[1] for line in (DEMO / "labels.txt").read_text().splitlines()]
    assert list(adata.obs["label"]) == expected
    assert list(adata.obs["cell_type"]) == expected  # the input's own obs columns stay
    with pytest.raises(scatac.InputError, match="no column 'nope'"):
        scatac.read(path, label_key="nope")


# --------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------
def test_labels_joined_by_barcode_with_header(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("barcode\tcell_type\nc\tT3\na\tT1\nb\tT2\n")  # out of order: joined by barcode
    assert list(io.read_labels(["a", "b", "c"], path)) == ["T1", "T2", "T3"]


def test_labels_in_cell_order(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("T1\nT2\nT1\n")
    assert list(io.read_labels(["a", "b", "c"], path)) == ["T1", "T2", "T1"]
    path.write_text("T1\nT2\n")
    with pytest.raises(scatac.InputError, match="2 labels"):
        io.read_labels(["a", "b", "c"], path)


def test_missing_barcodes_are_counted(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("a\tT1\nb\tT2\n")
    with pytest.raises(scatac.InputError) as raised:
        io.read_labels(["a", "b", "c", "d"], path)
    assert raised.value.where == str(path)
    assert "2 of 4 barcodes" in raised.value.problem


def tiny_folder(tmp_path, barcodes):
    X = sp.csr_matrix(np.ones((len(barcodes), 3), dtype=np.float32))
    io.write_10x(tmp_path / "tiny", X, list(barcodes), ["p1", "p2", "p3"])
    return tmp_path / "tiny"


def test_duplicate_barcodes(tmp_path, capsys):
    folder = tiny_folder(tmp_path, ["a", "a", "b"])
    order = tmp_path / "order.txt"
    order.write_text("T1\nT2\nT3\n")
    adata = scatac.read(folder, labels=order)
    assert list(adata.obs_names) == ["a", "a-1", "b"]
    assert list(adata.obs["label"]) == ["T1", "T2", "T3"]
    assert "warning:" in capsys.readouterr().err

    joined = tmp_path / "joined.tsv"
    joined.write_text("a\tT1\nb\tT3\n")
    with pytest.raises(scatac.InputError, match="duplicate barcode 'a'"):
        scatac.read(folder, labels=joined)


# --------------------------------------------------------------------------
# AE.py end to end
# --------------------------------------------------------------------------
LATENT = 4
EPOCHS = 5


def ae(outdir, *extra, labels=True, umap=False):
    args = [EPOCHS, DEMO, outdir, LATENT, *([DEMO / "labels.txt"] if labels else []), "--threads", "1", *extra]
    # in this process (the command line itself: test_bad_input_from_the_command_line)
    done = run_in_process("AE.py", *args, *([] if umap else ["--no-umap"]))
    assert done.returncode == 0, done.stderr
    return outdir


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return ae(tmp_path_factory.mktemp("ae") / "full", umap=True)


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    """Three label-free runs in process (no interpreter start-up each): seeds 0, 0 and 1."""
    base = tmp_path_factory.mktemp("seeds")
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        common.run_method(methods.AE, [str(EPOCHS), str(DEMO), str(base / name), str(LATENT), "--seed", str(seed),
                                       "--no-umap", "--threads", "1"])
        outs.append(base / name)
    return outs


def read_tsv(path):
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_ae_outputs_parse_back(full_run):
    import anndata
    import matplotlib.image
    import torch

    from scatac.models.ae import AutoEncoder

    out = full_run
    n_labels = len({line.split("\t")[1] for line in (DEMO / "labels.txt").read_text().splitlines()})
    feature = read_tsv(out / "feature.txt")
    assert feature[0] == ["barcode", *[f"AE_{i}" for i in range(1, LATENT + 1)]]
    assert len(feature) - 1 == N_CELLS  # the demo loses no cell to the filter
    values = np.array([[float(v) for v in row[1:]] for row in feature[1:]])
    assert values.shape == (N_CELLS, LATENT) and np.isfinite(values).all() and values.std() > 0
    barcodes = [row[0] for row in feature[1:]]

    umap = read_tsv(out / "umap.txt")
    assert umap[0] == ["barcode", "UMAP1", "UMAP2"] and len(umap) - 1 == N_CELLS
    assert np.isfinite(np.array([[float(v) for v in row[1:]] for row in umap[1:]])).all()

    clusters = read_tsv(out / "cluster_assignments.txt")
    assert clusters[0] == ["barcode", "cluster", "label"]
    assert [row[0] for row in clusters[1:]] == barcodes
    assert len({row[1] for row in clusters[1:]}) == n_labels  # K defaults to the number of label types

    scores = read_scores(out)
    for key in ("ARI", "NMI", "F1", "accuracy"):
        assert key in scores
    assert -1 <= scores["ARI"] <= 1 and -1 <= scores["silhouette"] <= 1
    for key in ("NMI", "F1", "accuracy"):
        assert 0 <= scores[key] <= 1

    confusion = read_tsv(out / "confusion_matrix.tsv")
    counts = np.array([[int(float(v)) for v in row[1:]] for row in confusion[1:]])
    assert counts.sum() == N_CELLS

    adata = anndata.read_h5ad(out / "result.h5ad")
    assert adata.shape[0] == N_CELLS
    assert adata.obsm["X_AE"].shape == (N_CELLS, LATENT)
    assert adata.obsm["X_umap"].shape == (N_CELLS, 2)
    assert {"label", "cluster"} <= set(adata.obs.columns)
    assert adata.uns["scatac_suite"]["scores"]["ARI"] == pytest.approx(scores["ARI"], abs=1e-5)

    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "AE" and run["settings"]["latent_dim"] == LATENT

    loss = read_tsv(out / "loss.tsv")
    assert len(loss) - 1 == EPOCHS
    assert np.isfinite([float(row[loss[0].index("loss")]) for row in loss[1:]]).all()

    saved = torch.load(out / "model.pt", weights_only=False)
    config = {k: v for k, v in saved["config"].items() if k != "settings"}
    model = AutoEncoder(**config)
    model.load_state_dict(saved["state_dict"])
    assert config["latent_dim"] == LATENT

    for name in ("umap.png", "confusion_matrix.png", "loss.png"):
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50

    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_runs_without_labels(seed_runs):
    out = seed_runs[0]
    scores = read_scores(out)
    assert "silhouette" in scores and "ARI" not in scores
    assert read_tsv(out / "cluster_assignments.txt")[0] == ["barcode", "cluster"]
    assert not (out / "umap.txt").exists()


def test_seed_reproduces_features(seed_runs):
    a, b, c = ((out / "feature.txt").read_bytes() for out in seed_runs)
    assert a == b
    assert a != c


# --------------------------------------------------------------------------
# Bad inputs: one error line, exit 2, no output folder
# --------------------------------------------------------------------------
def copy_demo(tmp_path, name="data"):
    folder = tmp_path / name
    shutil.copytree(DEMO, folder)
    return folder


def case_missing(tmp):
    return [tmp / "nowhere"], "nowhere"


def case_unknown_format(tmp):
    (tmp / "counts.xyz").write_text("1 2 3\n")
    return [tmp / "counts.xyz"], "counts.xyz"


def case_corrupt_mtx(tmp):
    folder = copy_demo(tmp)
    (folder / "matrix.mtx.gz").unlink()
    (folder / "matrix.mtx").write_text("this is not\na matrix market file\n")
    return [folder], "matrix.mtx"


def case_truncated_gz(tmp):
    folder = copy_demo(tmp)
    raw = (folder / "matrix.mtx.gz").read_bytes()
    (folder / "matrix.mtx.gz").write_bytes(raw[: len(raw) // 2])
    return [folder], "matrix.mtx.gz"


def case_peaks_count(tmp):
    folder = copy_demo(tmp)
    lines = (folder / "peaks.txt").read_text().splitlines()
    (folder / "peaks.txt").write_text("\n".join(lines[:-1]) + "\n")
    return [folder], "peaks.txt"


def case_barcodes_count(tmp):
    folder = copy_demo(tmp)
    lines = (folder / "barcodes.txt").read_text().splitlines()
    (folder / "barcodes.txt").write_text("\n".join(lines + ["extra_cell"]) + "\n")
    return [folder], "barcodes.txt"


def case_negative(tmp):
    folder = copy_demo(tmp)
    X = scatac.read(DEMO).X.copy()
    X.data[0] = -1
    (folder / "matrix.mtx.gz").unlink()
    write_mtx(folder / "matrix.mtx", X, field="real")
    return [folder], "negative"


def case_nan_table(tmp):
    path = tmp / "table.tsv"
    rows = ["peak\tc1\tc2\tc3"] + [f"chr1:{i}-{i + 1}\t1\t0\t{'NaN' if i == 5 else 1}" for i in range(20)]
    path.write_text("\n".join(rows) + "\n")
    return [path], "table.tsv"


def case_nothing_left(tmp):
    return [DEMO, "--min-peaks-per-cell", "100000"], "nothing left"


def case_labels_mismatch(tmp):
    labels = tmp / "labels.tsv"
    labels.write_text("".join(f"other_{i}\tT\n" for i in range(N_CELLS)))
    return [DEMO, "LABELS", labels], "labels.tsv"


def case_duplicate_join(tmp):
    folder = copy_demo(tmp)
    lines = (folder / "barcodes.txt").read_text().splitlines()
    lines[1] = lines[0]
    (folder / "barcodes.txt").write_text("\n".join(lines) + "\n")
    return [folder, "LABELS", folder / "labels.txt"], "duplicate barcode"


def case_latent_zero(tmp):
    return [DEMO, "LATENT", 0], "latent_dim"


def case_latent_too_big(tmp):
    return [DEMO, "LATENT", 3000], "latent_dim 3000"


def case_epochs_zero(tmp):
    return [DEMO, "EPOCHS", 0], "epochs"


def case_unwritable_outdir(tmp):
    (tmp / "afile").write_text("a file, not a folder\n")
    return [DEMO, "OUTDIR", tmp / "afile" / "out"], "afile"


BAD = {name[5:]: f for name, f in globals().copy().items() if name.startswith("case_")}


def bad_argv(spec, out):
    """AE.py argv from a case: data first, then LABELS/LATENT/EPOCHS/OUTDIR overrides, then options."""
    epochs, latent, labels, outdir, options = "2", str(LATENT), None, out, []
    data, rest = spec[0], list(spec[1:])
    while rest:
        item = rest.pop(0)
        if item == "LABELS":
            labels = rest.pop(0)
        elif item == "LATENT":
            latent = str(rest.pop(0))
        elif item == "EPOCHS":
            epochs = str(rest.pop(0))
        elif item == "OUTDIR":
            outdir = rest.pop(0)
        else:
            options.append(str(item))
    return [epochs, str(data), str(outdir), latent, *([str(labels)] if labels else []), "--no-umap", "--threads", "1", *options]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_error_line(case, tmp_path, capsys):
    spec, named = BAD[case](tmp_path)
    out = tmp_path / "out"
    argv = bad_argv(spec, out)
    with pytest.raises(SystemExit) as raised:  # any other exception would be a traceback for the user
        cli.run_cli(common.run_method, methods.AE, argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and named in last, last
    assert not out.exists() or not any(out.iterdir())


# the epochs each script takes before <data> (compare.py takes them as options)
SCRIPT_EPOCHS = {"AE.py": [2], "SparseAE.py": [2], "StackedAE.py": [1, 1], "VAE.py": [2], "compare.py": []}


@pytest.mark.parametrize("script", list(SCRIPT_EPOCHS))
def test_bad_input_from_the_command_line(script, tmp_path):
    """Each script's command line in a process of its own (most other tests run the scripts in process): a user's
    error is one line on stderr, exit status 2, no traceback, no output folder."""
    out = tmp_path / "out"
    done = run_script(script, *SCRIPT_EPOCHS[script], tmp_path / "missing_folder", out, LATENT, "--no-umap")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing_folder" in lines[0], done.stderr
    assert not out.exists()


# --------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------
REAL_EPOCHS = 30


@pytest.mark.parametrize("name", ["schep600"])
def test_ae_beats_chance_on_real_data(name, tmp_path):
    # Floor 0.3: K-means on random features scores ARI ~0 and LSI (TF-IDF + SVD) is far above it on schep600; an AE
    # with working defaults must be clearly above chance, if not yet at LSI. hemato600 is the README example's
    # (tests/test_api.py), at the AE's default epochs.
    folder = shared_path(name)
    out = tmp_path / name
    done = run_in_process("AE.py", REAL_EPOCHS, folder, out, 10, folder / "labels.txt", "--no-umap")
    assert done.returncode == 0, done.stderr
    assert read_scores(out)["ARI"] > 0.3
