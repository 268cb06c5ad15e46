"""NMF_Lsnmf.ipynb run headless with papermill: outputs parse back, bad parameters stop it cleanly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO, REPO, read_scores, shared_path

NOTEBOOK = REPO / "NMF_Lsnmf.ipynb"
METHODS = ("NMF", "LSNMF")


def run_notebook(tmp_path, *params, timeout=240):
    """`python -m papermill NMF_Lsnmf.ipynb <tmp>/run.ipynb -p ...` from the repo root, as the README shows."""
    command = [sys.executable, "-m", "papermill", str(NOTEBOOK.relative_to(REPO)), str(tmp_path / "run.ipynb"),
               "--no-progress-bar"]
    for name, value in zip(params[::2], params[1::2]):
        command += ["-p", name, str(value)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


def read_tsv(path):
    lines = Path(path).read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def check_method_outputs(folder: Path, method: str, rank: int, n_labels: int, min_ari: float, umap=True):
    """Every file the autoencoders write, plus loadings.tsv, with consistent shapes and scores above chance."""
    import anndata

    names = ["feature.txt", "cluster_assignments.txt", "scores.tsv", "confusion_matrix.tsv", "confusion_matrix.png",
             "result.h5ad", "run.json", "loadings.tsv"] + (["umap.png", "umap.txt"] if umap else [])
    for name in names:
        assert (folder / name).is_file(), f"{folder / name} missing"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left behind"

    header, rows = read_tsv(folder / "feature.txt")
    assert header == ["barcode", *[f"{method}_{k + 1}" for k in range(rank)]]
    features = np.array([[float(v) for v in row[1:]] for row in rows])
    assert features.shape == (len(rows), rank) and features.min() >= 0 and np.isfinite(features).all()
    barcodes = [row[0] for row in rows]

    header, loadings = read_tsv(folder / "loadings.tsv")
    assert header == ["peak", *[f"{method}_{k + 1}" for k in range(rank)]]
    H = np.array([[float(v) for v in row[1:]] for row in loadings])
    assert H.min() >= 0 and (H.sum(axis=0) > 0).all()

    adata = anndata.read_h5ad(folder / "result.h5ad")
    assert list(adata.obs_names) == barcodes
    assert adata.obsm[f"X_{method}"].shape == (len(barcodes), rank)
    assert adata.n_vars == len(loadings) and list(adata.var_names) == [row[0] for row in loadings]
    if umap:
        assert adata.obsm["X_umap"].shape == (len(barcodes), 2)

    header, assignments = read_tsv(folder / "cluster_assignments.txt")
    assert header == ["barcode", "cluster", "label"] and [r[0] for r in assignments] == barcodes
    assert len({r[1] for r in assignments}) == n_labels

    scores = read_scores(folder)
    assert scores["ARI"] > min_ari and scores["NMI"] > min_ari, scores
    assert 0 < scores["F1"] <= 1 and 0 < scores["accuracy"] <= 1 and scores["n_clusters"] == n_labels
    run = json.loads((folder / "run.json").read_text())
    assert run["method"] == method and run["settings"]["rank"] == rank
    return scores


def check_executed_notebook(path: Path):
    """The executed notebook shows the UMAPs and the score table inline."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # a UMAP and a confusion matrix per method
    tables = [o["data"]["text/plain"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("ARI" in t and "LSNMF" in t and "LSI (reference)" in t for t in tables)


def test_committed_notebook_is_clean():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "notebook carries outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("data", "outdir", "rank", "labels", "max_iter", "seed", "methods", "transform",
                 "min_cells_per_peak", "max_cells_per_peak", "min_peaks_per_cell"):
        assert f"\n{name} = " in "\n" + tagged[0].source, f"parameter {name} missing"
    text = NOTEBOOK.read_text()
    for absolute in ("/work/", "/home/", "/Users/", "/tmp/", "C:\\\\"):
        assert absolute not in text, f"absolute path {absolute!r} in the notebook"
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_notebook_on_demo_data(tmp_path):
    outdir = tmp_path / "NMF_demo"
    done = run_notebook(tmp_path, "data", "data/demo", "outdir", outdir, "rank", 10, "labels", "data/demo/labels.txt")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in outdir.iterdir()) == ["LSNMF", "NMF"]
    n_labels = len({line.split("\t")[1] for line in (DEMO / "labels.txt").read_text().splitlines()})
    for method in METHODS:
        check_method_outputs(outdir / method, method, 10, n_labels, min_ari=0.5)
    check_executed_notebook(tmp_path / "run.ipynb")


def test_notebook_on_hemato600(tmp_path):
    data = shared_path("hemato600")
    outdir = tmp_path / "NMF_hemato"
    # the notebook takes paths relative to the repo root, as a user would write them; the UMAPs are
    # checked on the demo run (umap-learn's first call compiles for ~15 s in every fresh kernel)
    rel = os.path.relpath(data, REPO)
    done = run_notebook(tmp_path, "data", rel, "outdir", outdir, "rank", 10, "labels", f"{rel}/labels.txt",
                        "umap", False, "cluster", "leiden")
    assert done.returncode == 0, done.stderr[-3000:]
    for method in METHODS:
        # LSI reaches 0.50-0.56 here and NMF/LSNMF about 0.5; random features score about 0
        scores = check_method_outputs(outdir / method, method, 10, 6, min_ari=0.3, umap=False)
        assert scores["n_cells"] == 600 and scores["resolution"] > 0  # Leiden, bisected to the 6 types


@pytest.mark.parametrize("params, problem", [
    (("data", "data/no_such_folder"), "data/no_such_folder: no such file or folder"),
    (("rank", 0), "rank: must be an integer >= 1, got 0"),
    (("max_iter", -1), "max_iter: must be an integer >= 1, got -1"),
    (("nmf_solver", "lbfgs"), "solver: must be one of 'mu', 'cd', got 'lbfgs'"),
    (("rank", 5000), "rank 5000 must be smaller than the number of peaks kept (2366)"),
    (("methods", "NMF,PCA"), "methods: unknown method 'PCA'; allowed: NMF, LSNMF"),
    (("cluster", "louvain"), "cluster: must be one of 'kmeans', 'leiden', 'spectral', got 'louvain'"),
])
def test_bad_parameters_stop_with_one_message_and_write_nothing(tmp_path, params, problem):
    outdir = tmp_path / "out"
    base = {"data": "data/demo", "outdir": outdir, "rank": 10, "labels": "data/demo/labels.txt"}
    base.update(dict(zip(params[::2], params[1::2])))
    done = run_notebook(tmp_path, *[x for kv in base.items() for x in kv], timeout=120)
    assert done.returncode != 0
    message = done.stderr + done.stdout
    assert "InputError" in message and problem in message, message[-2000:]
    assert not outdir.exists(), f"{outdir} was created: {list(outdir.rglob('*'))}"


def test_notebook_on_a_store(tmp_path):
    """-p store: the filtered data are written into an on-disk store once and factorized from it block by block;
    a second run reuses the store; the results name the store instead of holding the counts; a run of the same store
    path with another filter is refused before any work."""
    import anndata

    store, outdir = tmp_path / "demo.store.h5ad", tmp_path / "NMF_store"
    common = ("data", "data/demo", "outdir", outdir, "rank", 10, "labels", "data/demo/labels.txt", "umap", False,
              "store", store)
    done = run_notebook(tmp_path, *common)
    assert done.returncode == 0, done.stderr[-3000:]
    assert store.is_file()
    n_labels = len({line.split("\t")[1] for line in (DEMO / "labels.txt").read_text().splitlines()})
    for method in METHODS:
        check_method_outputs(outdir / method, method, 10, n_labels, min_ari=0.5, umap=False)
        result = anndata.read_h5ad(outdir / method / "result.h5ad")
        assert result.X is None  # the counts stay in the store
    nb_text = (tmp_path / "run.ipynb").read_text()
    assert "wrote store" in nb_text and "NMF: minibatch" in nb_text  # partial_fit over the store's blocks

    written = store.stat().st_mtime_ns
    again = run_notebook(tmp_path, *common, "methods", "NMF")  # one method is enough to see the store reused
    assert again.returncode == 0, again.stderr[-3000:]
    assert store.stat().st_mtime_ns == written and "reusing store" in (tmp_path / "run.ipynb").read_text()

    # the same store path for another filter of the input: refused before any work, nothing written
    other = tmp_path / "other"
    done = run_notebook(tmp_path, "data", "data/demo", "outdir", other, "rank", 10, "labels", "data/demo/labels.txt",
                        "min_peaks_per_cell", 20, "methods", "NMF", "store", store, timeout=120)
    assert done.returncode != 0
    message = done.stderr + done.stdout
    assert "InputError" in message and "holds a store made from something else" in message, message[-2000:]
    assert not other.exists() and store.stat().st_mtime_ns == written
