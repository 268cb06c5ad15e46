"""bench/scale.py --quick runs end to end and writes a parsable table (no timing assertions)."""
import csv

from conftest import run_script

# LSNMF's row is NMF's path (a factorization in the child process), so NMF stands for both here
METHODS = ["AE", "NMF"]


def test_scale_quick_writes_table(tmp_path):
    out = tmp_path / "scale.tsv"
    # --quick's schedule at two smaller sizes: the table's shape, not its numbers, is what is checked
    proc = run_script("bench/scale.py", "--quick", "--sizes", "1000x2000,2000x2000", "--export", "--methods",
                      ",".join(METHODS), "--out", out, "--tmpdir", tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out) as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    expected = {"n_cells", "n_peaks", "method", "load_s", "epoch_s", "total_s", "peak_rss_mb", "csr_mb",
                "mem_ratio", "mm_efficiency", "decoder", "batch_size", "status"}
    assert expected <= set(rows[0].keys())
    expected = [(m, d) for m in METHODS for d in (("full", "sampled") if m == "AE" else ("-",))]
    assert [(r["n_cells"], r["n_peaks"], r["method"], r["decoder"]) for r in rows] == [
        (c, p, m, d) for c, p in (("1000", "2000"), ("2000", "2000")) for m, d in expected]
    for r in rows:
        assert r["status"] == "ok"
        for key in ("load_s", "epoch_s", "export_s", "total_s", "peak_rss_mb", "csr_mb", "mem_ratio"):
            assert float(r[key]) > 0, (r["method"], key)
    ae = [r for r in rows if r["method"] == "AE"]
    assert all(float(r["mm_efficiency"]) > 0 for r in ae)
    # the sampled decoder trains on an eighth of the cells a batch (auto), the full one on 64
    assert [r["batch_size"] for r in ae] == ["64", "128", "64", "256"]
    # the simulated matrices are the ~2% dense, sparse kind the benchmark is about
    assert all(int(r["nnz"]) < 0.05 * int(r["n_cells"]) * int(r["n_peaks"]) for r in rows)


def test_scale_streamed_from_a_store_on_two_processes(tmp_path):
    """--streamed writes a store block by block and trains from it; --processes 2 runs torchrun (gloo, loopback)."""
    out = tmp_path / "streamed.tsv"
    proc = run_script("bench/scale.py", "--sizes", "3000x2000", "--density", "0.01", "--streamed", "--methods", "AE",
                      "--decoders", "sampled", "--max-batches", "2", "--threads", "1", "--processes", "2",
                      "--store-dir", tmp_path, "--out", out, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out) as handle:
        (row,) = list(csv.DictReader(handle, delimiter="\t"))
    assert (row["data"], row["processes"], row["status"]) == ("store", "2", "ok")
    assert float(row["epoch_s"]) > 0 and float(row["peak_rss_mb"]) > 0 and row["epoch_note"].startswith("~2b")
    assert row["ARI"] == ""  # two batches an epoch: not clustered
    assert list(tmp_path.glob("store_3000x2000_*.h5ad"))  # kept for the next run with --store-dir


def test_a_failed_row_says_why_not_torchruns_banner():
    """A rank's exception is the row's status, not the '=' banner that ends torchrun's report."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("scale_bench", REPO / "bench" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    stderr = "\n".join([
        "[rank1]: Traceback (most recent call last):",
        '[rank1]:   File "scale_child.py", line 9, in <module>',
        "[rank1]: RuntimeError: Connection closed by peer",
        "Traceback (most recent call last):",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "============================================================",
        "scale_child.py FAILED",
        "  exitcode  : 1 (pid: 42)",
        "============================================================",
    ])
    assert scale.failure_line(stderr, 1) == "[rank1]: RuntimeError: Connection closed by peer"
    assert scale.failure_line("Killed\n=====\n", -9) == "Killed"
    assert scale.failure_line("", -9) == "exit -9"
