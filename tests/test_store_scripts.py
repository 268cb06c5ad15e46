"""The method scripts' --store: the filtered input written once into an on-disk store (scatac.io.store), reused by
later runs of the same input and filter and refused for any other, and trained on streamed, never held in memory.

Each script case runs AE.py in this process (conftest.run_in_process; two runs at once and torchrun get processes
of their own) on data/demo (800 cells x 3,000 peaks), 3 epochs, latent 4; the run whose scores are checked trains
longer, as the streamed path has no neighbour term to make up for few epochs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO, REPO, run_in_process

pytest.importorskip("torch")
anndata = pytest.importorskip("anndata")

FAST = ["--no-umap", "--threads", "1", "--hidden-dims", "32"]
# drops some of the demo's cells (the sparsest hold fewer than 40 open peaks), so that "the filtered cells" is
# something a run can get wrong
STRICT = ["--min-peaks-per-cell", "40"]


def ae(data, out, *args, epochs=3):
    """AE.py in this process: `epochs` on `data` into `out`, latent 4."""
    return run_in_process("AE.py", epochs, data, out, 4, *args)


def files_in(folder: Path) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def snapshot(folder: Path) -> dict:
    return {name: (folder / name).read_bytes() for name in files_in(folder)}


def first_column(path: Path) -> list:
    return [line.split("\t", 1)[0] for line in path.read_text().splitlines()[1:]]


def scores(outdir: Path) -> dict:
    return {key: float(value) for key, value in (line.split("\t") for line in
                                                 (outdir / "scores.tsv").read_text().splitlines()[1:])}


def one_error_line(done, *words) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same AE run in memory and from a store (written by this run): the folders, the store and the logs."""
    root = tmp_path_factory.mktemp("store_runs")
    store = root / "demo.store.h5ad"
    in_memory = ae(DEMO, root / "memory", DEMO / "labels.txt", *STRICT, *FAST)
    assert in_memory.returncode == 0, in_memory.stderr
    # long enough to score: at 3 epochs the streamed AE, without the neighbour term, is barely above chance
    from_store = ae(DEMO, root / "stored", DEMO / "labels.txt", *STRICT, *FAST, "--store", store, epochs=60)
    assert from_store.returncode == 0, from_store.stderr
    return {"root": root, "store": store, "memory": root / "memory", "stored": root / "stored",
            "stderr": from_store.stderr}


def test_a_store_run_writes_what_a_run_in_memory_writes(runs):
    memory, stored = runs["memory"], runs["stored"]
    assert files_in(stored) == files_in(memory)
    kept = first_column(memory / "feature.txt")
    assert 0 < len(kept) < 800  # the filter dropped cells
    assert first_column(stored / "feature.txt") == kept
    assert first_column(stored / "cluster_assignments.txt") == kept
    features = np.loadtxt(stored / "feature.txt", skiprows=1, usecols=range(1, 5))
    assert features.shape == (len(kept), 4) and np.isfinite(features).all()
    assert scores(stored)["ARI"] > 0.2  # six types: chance is 0
    assert f"from {runs['store']} (on disk, streamed)" in runs["stderr"]
    assert f"wrote store {runs['store']}" in runs["stderr"]
    run = json.loads((stored / "run.json").read_text())
    assert run["settings"]["store"] == str(runs["store"])
    assert run["filter"] == json.loads((memory / "run.json").read_text())["filter"]
    assert not [p.name for p in runs["root"].iterdir() if p.name.startswith(".")]  # no staging or lock file left


def test_the_store_is_an_anndata_of_the_kept_cells_with_their_labels(runs):
    store = anndata.read_h5ad(runs["store"])
    result = anndata.read_h5ad(runs["memory"] / "result.h5ad")
    assert list(store.obs_names) == list(result.obs_names)
    assert list(store.var_names) == list(result.var_names)
    assert (store.X != result.X).nnz == 0
    assert list(store.obs["label"].astype(str)) == list(result.obs["label"].astype(str))
    record = store.uns["scatac"]["store"]
    assert record["source"] == str(DEMO.resolve())
    assert json.loads(record["thresholds"])["min_peaks_per_cell"] == 40
    assert int(store.uns["scatac"]["filter"]["cells_after"]) == store.n_obs


def test_a_store_runs_result_h5ad_has_no_counts_and_names_the_store(runs):
    stored = anndata.read_h5ad(runs["stored"] / "result.h5ad")
    memory = anndata.read_h5ad(runs["memory"] / "result.h5ad")
    assert stored.X is None and memory.X is not None
    assert stored.uns["scatac_suite"]["counts_store"] == str(runs["store"])
    assert np.array_equal(stored.obs["n_open_peaks"].to_numpy(), memory.obs["n_open_peaks"].to_numpy())
    assert list(stored.obs["label"].astype(str)) == list(memory.obs["label"].astype(str))
    assert stored.obsm["X_AE"].shape == memory.obsm["X_AE"].shape


def test_a_second_run_reuses_the_store(runs, tmp_path):
    before = os.stat(runs["store"])
    done = ae(DEMO, tmp_path / "again", DEMO / "labels.txt", *STRICT, *FAST, "--store", runs["store"])
    assert done.returncode == 0, done.stderr
    assert f"reusing store {runs['store']}" in done.stderr
    after = os.stat(runs["store"])
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not written again
    assert first_column(tmp_path / "again" / "feature.txt") == first_column(runs["stored"] / "feature.txt")


@pytest.mark.parametrize("change, words", [(["--min-peaks-per-cell", "50"],
                                            ["min_peaks_per_cell 40.0 (this run: 50.0)"]),
                                           ([], ["labels"])])
def test_a_store_made_otherwise_is_refused_and_nothing_changes(runs, change, words):
    """Other thresholds (or no labels where the store has them): one line naming the store and what differs; the
    earlier results and the store stay as they were."""
    earlier, store = snapshot(runs["stored"]), runs["store"].read_bytes()
    labels = [DEMO / "labels.txt"] if change else []
    options = [*STRICT, *change] if change else STRICT
    done = ae(DEMO, runs["stored"], *labels, *options, *FAST, "--store", runs["store"])
    one_error_line(done, str(runs["store"]), "made from something else", *words)
    assert snapshot(runs["stored"]) == earlier
    assert runs["store"].read_bytes() == store


def test_two_runs_asking_for_one_new_store_at_once_write_it_once(tmp_path):
    """The second waits for the first's lock, then finds the store written and reuses it (whichever comes first)."""
    store = tmp_path / "demo.store.h5ad"
    runs = [subprocess.Popen([sys.executable, str(REPO / "AE.py"), "3", str(DEMO), str(tmp_path / f"out{i}"), "4",
                              str(DEMO / "labels.txt"), *FAST, "--store", str(store)], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    logs = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    assert sorted("wrote store" in log for log in logs) == [False, True]
    assert sum("reusing store" in log for log in logs) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.store.h5ad", "out0", "out1"]  # no lock file left


@pytest.mark.parametrize("where, words", [("missing/demo.store.h5ad", ["does not exist"]),
                                          ("/proc/demo.store.h5ad", ["kernel file system"]),
                                          (".", ["is a folder"]),
                                          ("out/demo.store.h5ad", ["inside the output folder"]),
                                          ("notes.txt", ["not a store written by --store"])])
def test_a_store_path_that_cannot_be_used_is_refused_before_any_work(tmp_path, where, words):
    (tmp_path / "notes.txt").write_text("my own notes\n")
    path = where if where.startswith("/") else tmp_path / where
    done = ae(DEMO, tmp_path / "out", DEMO / "labels.txt", *FAST, "--store", path)
    one_error_line(done, str(path), *words)
    assert not (tmp_path / "out").exists()  # refused before the output folder was made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "my own notes\n"


def test_an_h5ad_input_is_streamed_into_the_store_with_its_label_column(tmp_path):
    """An .h5ad is read block by block into the store (not whole); --label-key's column becomes the labels."""
    import scatac

    adata = scatac.read(DEMO, labels=DEMO / "labels.txt", verbose=False)
    adata.obs["cell_type"] = adata.obs.pop("label")
    adata.write_h5ad(tmp_path / "demo.h5ad")
    store = tmp_path / "demo.store.h5ad"
    done = ae(tmp_path / "demo.h5ad", tmp_path / "out", *STRICT, *FAST, "--label-key", "cell_type", "--store", store)
    assert done.returncode == 0, done.stderr
    confusion = (tmp_path / "out" / "confusion_matrix.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in confusion[1:]) == [f"type_{t}" for t in "ABCDEF"]
    kept = anndata.read_h5ad(store)
    assert list(kept.obs_names) == first_column(tmp_path / "out" / "feature.txt")
    assert "label" in kept.obs and json.loads(kept.uns["scatac"]["store"]["input"])["label_key"] == "cell_type"


# ---- convert_to_store's filter, without a script -------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["folder", "h5ad"])
@pytest.mark.parametrize("thresholds", [dict(min_cells_per_peak=20, min_peaks_per_cell=150, n_top_peaks=800),
                                        dict(min_cells_per_peak=0.05, max_cells_per_peak=0.3, min_peaks_per_cell=0.1)])
def test_a_filtered_store_holds_what_pp_filter_keeps(tmp_path, layout, thresholds):
    """Read whole (a 10x folder) or streamed in passes (an .h5ad, blocks that do not divide the cells): the same
    cells, peaks, counts, labels and summary as pp.filter on the matrix in memory."""
    import scatac
    from scatac.io.store import convert_to_store

    adata = scatac.read(DEMO, labels=DEMO / "labels.txt", verbose=False)
    if layout == "h5ad":
        adata.write_h5ad(tmp_path / "demo.h5ad")
        source = dict(source=tmp_path / "demo.h5ad", label_key="label")
    else:
        source = dict(source=DEMO, labels=DEMO / "labels.txt")
    summary = scatac.pp.filter(adata, **thresholds, verbose=False)
    store = convert_to_store(path=tmp_path / "kept.h5ad", filter=thresholds, block_cells=61, progress=False,
                             **source)
    kept = anndata.read_h5ad(store)
    assert 0 < kept.n_obs < 800 and 0 < kept.n_vars < 3000
    assert list(kept.obs_names) == list(adata.obs_names) and list(kept.var_names) == list(adata.var_names)
    assert (kept.X != adata.X).nnz == 0
    assert list(kept.obs["label"].astype(str)) == list(adata.obs["label"].astype(str))
    assert {key: int(value) for key, value in kept.uns["scatac"]["filter"].items()} == summary


def test_two_ranks_write_the_store_once_and_train_from_it(tmp_path):
    """Under torchrun rank 0 writes the store while rank 1 waits; both then train from it. Every call that writes
    a store is counted (a sitecustomize wraps convert_to_store in each process): one, by rank 0."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('STORE_WRITES_LOG'):\n"
        "    import scatac.io.store as store\n"
        "    original = store.convert_to_store\n"
        "    def counted(*args, **kwargs):\n"
        "        with open(os.environ['STORE_WRITES_LOG'], 'a') as log:\n"
        "            log.write(os.environ.get('RANK', '-') + '\\n')\n"
        "        return original(*args, **kwargs)\n"
        "    store.convert_to_store = counted\n")
    log, store, out = tmp_path / "writes.log", tmp_path / "demo.store.h5ad", tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "STORE_WRITES_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(REPO / "AE.py"), "3", str(DEMO), str(out), "4", str(DEMO / "labels.txt"), *STRICT, *FAST,
               "--store", str(store)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert log.read_text().split() == ["0"]
    assert anndata.read_h5ad(store).n_obs == len(first_column(out / "feature.txt")) < 800
    assert "training on cpu, 2 processes" in done.stderr
    assert done.stdout.count("results in") == 1  # rank 0 alone writes and says so


def test_compare_reuses_a_scripts_store_and_skips_what_needs_the_matrix(runs, tmp_path):
    """compare.py --store shares the scripts' store logic: the store AE.py wrote for the same input, labels and filter
    is reused; methods that cannot read a store get a "skipped" row instead of failing the comparison."""
    out = tmp_path / "compare"
    done = run_in_process("compare.py", DEMO, out, 4, DEMO / "labels.txt", "--methods", "AE,NMF,LSNMF", "--seeds",
                          "1", "--ae-epochs", "3", "--nmf-max-iter", "50", "--no-snapatac2", "--no-umap", "--threads",
                          "1", *STRICT, "--store", runs["store"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"reusing store {runs['store']}" in done.stderr
    lines = [line.split("\t") for line in (out / "comparison.tsv").read_text().splitlines()]
    status = {row[0]: row[lines[0].index("status")] for row in lines[1:]}
    assert status == {"AE": "ok", "NMF": "ok", "LSNMF": "skipped: needs the matrix in memory", "LSI": "ok",
                      "LSI_Signac": "ok", "LSI_US": "ok", "LSI_idf": "ok"}
    assert not (out / "LSNMF").exists()
    kept = first_column(runs["stored"] / "feature.txt")
    for method in ("AE", "NMF", "LSI"):
        assert first_column(out / method / "feature.txt") == kept
        result = anndata.read_h5ad(out / method / "result.h5ad")
        assert result.X is None and result.uns["scatac_suite"]["counts_store"] == str(runs["store"])
    assert scores(out / "LSI")["ARI"] > 0.5  # LSI separates the demo's types from the store as from memory
