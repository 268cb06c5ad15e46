"""Outputs that never mix runs, and every bad input refused before any work (issue 13): a run finishes whole or
leaves the earlier result as it was, whatever happens to it (a second run, an error, a full disk, a signal, a kill)."""
import errno
import gzip
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import common
import compare
from conftest import DEMO, REPO, run_in_process, run_script
from scatac import cli, files, methods
from scatac.errors import InputError

FAST = ["--no-umap", "--threads", "1", "--hidden-dims", "32"]


def ae(*args):
    """AE.py in this process (conftest.run_in_process): 3 epochs on `data`, latent 4."""
    return run_in_process("AE.py", 3, *args[:2], 4, *args[2:])


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list:
    """Hidden staging, old or lock entries beside or inside `folder`."""
    return sorted(p.name for p in [*folder.parent.iterdir(), *(folder.iterdir() if folder.is_dir() else [])]
                  if p.name.startswith("."))


def one_error_line(done, *words):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A complete AE result with labels and UMAP: what every test below must leave intact or replace whole."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    done = ae(DEMO, out, DEMO / "labels.txt", "--threads", "1", "--hidden-dims", "32")
    assert done.returncode == 0, done.stderr
    return snapshot(out)


@pytest.fixture(scope="module")
def earlier_without_umap(tmp_path_factory):
    """A complete AE result with labels and no UMAP: the kills below need a run whose writing they can interrupt,
    not the seconds umap-learn spends compiling in every new process."""
    out = tmp_path_factory.mktemp("earlier_without_umap") / "out"
    done = ae(DEMO, out, DEMO / "labels.txt", *FAST)
    assert done.returncode == 0, done.stderr
    return snapshot(out)


def fresh_copy(earlier: dict, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    for name, content in earlier.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    return out


# --------------------------------------------------------------------------
# Output folders never mix runs
# --------------------------------------------------------------------------
def test_a_new_run_replaces_the_whole_folder(earlier, tmp_path):
    out = fresh_copy(earlier, tmp_path)
    done = ae(DEMO, out, *FAST)  # no labels, no UMAP this time
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert not {"umap.txt", "umap.png", "confusion_matrix.tsv", "confusion_matrix.png"} & set(names), names
    assert names == sorted(["cluster_assignments.txt", "feature.txt", "loss.png", "loss.tsv", "model.pt", "result.h5ad",
                            "run.json", "scores.tsv"])
    assert leftovers(out) == []


def test_an_outdir_that_is_a_link_puts_the_result_in_its_target(earlier, tmp_path):
    target = fresh_copy(earlier, tmp_path)
    (tmp_path / "link").symlink_to(target)
    assert ae(DEMO, tmp_path / "link", *FAST).returncode == 0
    assert (tmp_path / "link").is_symlink() and snapshot(target) != earlier and not (target / "umap.txt").exists()
    assert leftovers(target) == []


def test_a_folder_holding_other_files_is_never_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    one_error_line(ae(DEMO, out, *FAST), "notes.txt", "not replacing")
    assert (out / "notes.txt").read_text() == "my notes\n" and [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_second_run_into_a_held_folder_is_refused(earlier, tmp_path):
    out = fresh_copy(earlier, tmp_path)
    first = subprocess.Popen([sys.executable, str(REPO / "AE.py"), "40", str(DEMO), str(out), "4", *FAST],
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:  # the lock is taken before loading; training starts after it
            if "training on" in line:
                break
        second = run_script("AE.py", 3, DEMO, out, 4, *FAST)  # a process of its own: the lock is between processes
        one_error_line(second, str(out), "another run")
    finally:
        first.stderr.read()
        assert first.wait(timeout=300) == 0
    assert (out / "feature.txt").exists() and leftovers(out) == []


def mtimes(folder: Path) -> dict:
    """Names and modification times in `folder`, skipping files that vanish while it is read."""
    found = {}
    for name in os.listdir(folder):
        try:
            found[name] = os.stat(folder / name).st_mtime_ns
        except FileNotFoundError:
            pass
    return found


def first_write(folder: Path, run: subprocess.Popen):
    """Wait, polling every millisecond, until the run writes anything into or beside `folder`."""
    def written_beside():  # the lock, taken before loading, is not a write
        return {name for name in os.listdir(folder.parent) if not name.endswith(".lock")}

    beside, inside = written_beside(), mtimes(folder)
    while run.poll() is None:
        if written_beside() != beside or mtimes(folder) != inside:
            return
        time.sleep(0.001)


@pytest.mark.parametrize("delay", [0.03, 0.4, 1.2])
def test_a_run_killed_while_writing_leaves_one_whole_result(earlier_without_umap, tmp_path, delay):
    """SIGKILL at a random moment near `delay` after the run's first write (writing takes about 2 s, mostly figures)."""
    earlier = earlier_without_umap
    out = fresh_copy(earlier, tmp_path)
    run = subprocess.Popen([sys.executable, str(REPO / "AE.py"), "3", str(DEMO), str(out), "4", str(DEMO / "labels.txt"),
                            "--seed", "7", *FAST], cwd=REPO, stderr=subprocess.DEVNULL)
    first_write(out, run)
    time.sleep(delay * random.uniform(0.7, 1.3))
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    now = snapshot(out)
    if now != earlier:  # else the new result, whole and consistent
        assert sorted(now) == sorted(earlier), "a mix of two runs' files"
        assert '"seed": 7' in now["run.json"].decode()
        assert [name for name in now if now[name] == earlier[name]] == [], "files of the earlier run beside the new"
    # what a kill leaves beside the folder goes with the next run into it
    assert ae(DEMO, out, *FAST).returncode == 0
    assert leftovers(out) == []


def test_without_an_atomic_exchange_a_crash_between_renames_loses_nothing(earlier, tmp_path, monkeypatch):
    """Where renameat2 cannot exchange (another OS, some file systems) the old folder is moved aside first; a crash
    right after that leaves no folder, and the next run puts the old result back before it starts."""
    out = fresh_copy(earlier, tmp_path)
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def crash_after_moving_aside(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            raise SystemExit("killed")  # stands for a SIGKILL between the two renames

    monkeypatch.setattr(files.os, "replace", crash_after_moving_aside)
    with pytest.raises(SystemExit):
        with files.staged_folder(out) as stage:
            (stage / "feature.txt").write_text("new\n")
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert not out.exists() and any(p.name.endswith(".old") for p in tmp_path.iterdir())
    with files.output_lock(out):
        assert snapshot(out) == earlier
    assert leftovers(out) == []


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_run_with_one_line_and_the_old_result(earlier, tmp_path, signum, status):
    out = fresh_copy(earlier, tmp_path)
    # A shell starts a background job with SIGINT ignored, and Python keeps an inherited ignore (so that Ctrl-C
    # on a script does not stop the jobs it put in the background): the scripts respect that convention, so the
    # child gets SIGINT's default back here, as a run in the foreground of a terminal has it, whichever way the
    # suite itself was started.
    run = subprocess.Popen([sys.executable, str(REPO / "AE.py"), "200", str(DEMO), str(out), "4", *FAST],
                           cwd=REPO, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in run.stderr:
        if "training on" in line:
            break
    time.sleep(0.5)
    run.send_signal(signum)
    rest = run.stderr.read()
    assert run.wait(timeout=60) == status
    assert rest.strip().splitlines()[-1] in ("error: terminated", "error: interrupted"), rest[-500:]
    assert "Traceback" not in rest
    assert snapshot(out) == earlier and leftovers(out) == []


# --------------------------------------------------------------------------
# A full disk, and other write errors: one line naming the file, the old result intact
# --------------------------------------------------------------------------
def full_disk_at(name):
    original = files.write_text

    def write_text(path, text):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, text)

    return write_text


@pytest.mark.parametrize("how", ["scores.tsv", "result.h5ad", "model.pt"])
def test_a_full_disk_is_one_line_naming_the_file(earlier, tmp_path, monkeypatch, capsys, how):
    import shutil as shutil_module

    import torch

    out = fresh_copy(earlier, tmp_path)
    if how == "scores.tsv":
        monkeypatch.setattr(files, "write_text", full_disk_at("scores.tsv"))
    elif how == "result.h5ad":  # less room than the counts need: refused before HDF5 starts writing
        usage = shutil_module.disk_usage(tmp_path)
        monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=2**20))
    else:
        def no_room(*args, **kwargs):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                               "data/3: file write failed")
        monkeypatch.setattr(torch, "save", no_room)
    argv = ["2", str(DEMO), str(out), "4", *FAST]
    with pytest.raises(SystemExit) as raised:
        cli.run_cli(common.run_method, methods.AE, argv)
    assert raised.value.code == 2
    last = [line for line in capsys.readouterr().err.splitlines() if line.strip()][-1]
    assert last.startswith(f"error: {out / how}: cannot be written:"), last
    assert snapshot(out) == earlier and leftovers(out) == []


# --------------------------------------------------------------------------
# Checks before work: no progress line before the error, no matrix read for what needs none
# --------------------------------------------------------------------------
def test_a_latent_size_the_header_rules_out_is_refused_before_loading(tmp_path):
    line = one_error_line(run_in_process("AE.py", 2, DEMO, tmp_path / "out", 5000, *FAST), "latent_dim 5000")
    assert "number of peaks in the file (3000)" in line  # the header's, before anything is read


def test_an_outdir_under_proc_is_refused_first(tmp_path):
    one_error_line(ae(DEMO, "/proc/scatac_out", *FAST), "/proc", "kernel file system")


def test_data_checks_come_before_any_progress_line(tmp_path):
    # the header allows latent 100 (800 cells x 3,000 peaks); peaks open in 15% of the cells are fewer (72)
    one_error_line(run_in_process("AE.py", 2, DEMO, tmp_path / "out", 100, "--min-cells-per-peak", "0.15", *FAST),
                   "latent_dim 100 must be smaller than the number of peaks kept (72)")
    folder = copy_demo(tmp_path, cells=1)
    one_error_line(ae(folder, tmp_path / "out", *FAST), "latent_dim 4 must not exceed the number of cells in the file (1)")


@pytest.mark.parametrize("option, value, words", [("--threads", "0", "--threads: must be an integer >= 1, got 0"),
                                                  ("--threads", "-1", "--threads: must be an integer >= 1, got -1"),
                                                  ("--batch-size", "0", "--batch-size: must be an integer >= 1 or 'auto'")])
def test_numeric_options_are_checked(tmp_path, option, value, words):
    one_error_line(ae(DEMO, tmp_path / "out", *FAST, option, value), words)


def test_a_gpu_asked_for_and_absent_is_refused_before_loading(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    one_error_line(ae(DEMO, tmp_path / "out", *FAST, "--device", "cuda"), "--device", "no CUDA GPU")
    assert not (tmp_path / "out").exists()


def test_more_threads_than_cpus_are_cut_to_the_cpus_with_a_warning(monkeypatch, capsys):
    import torch
    from scatac import runtime

    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 1)
    try:
        runtime.set_threads(10000)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert "--threads 10000 is more than the 1 CPUs" in capsys.readouterr().err


def test_folders_a_failed_run_made_are_removed(tmp_path):
    deep = tmp_path / "a" / "b" / "out"
    with pytest.raises(InputError):
        with files.output_lock(deep):
            raise InputError("data", "broken")
    assert list(tmp_path.iterdir()) == []


def test_a_batch_of_one_cell_trains(tmp_path):
    folder = copy_demo(tmp_path, cells=40)
    done = run_in_process("AE.py", 1, folder, tmp_path / "out", 3, "--batch-size", "1", "--min-cells-per-peak", "2",
                          *FAST)
    assert done.returncode == 0, done.stderr
    loss = (tmp_path / "out" / "loss.tsv").read_text().splitlines()
    assert loss[0].split("\t")[:3] == ["phase", "epoch", "loss"] and np.isfinite(float(loss[1].split("\t")[2]))


# --------------------------------------------------------------------------
# Every read guarded; sizes checked before anything is allocated
# --------------------------------------------------------------------------
def copy_demo(tmp_path, cells=None) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(DEMO, folder)
    if cells is not None:
        import scatac
        from scatac.io import write_10x

        adata = scatac.read(DEMO, labels=DEMO / "labels.txt")[:cells]
        shutil.rmtree(folder)
        write_10x(folder, adata.X.tocsr(), list(adata.obs_names), list(adata.var_names), list(adata.obs["label"]))
    return folder


def corrupt(path: Path, how: str):
    """Break a gzip stream as disks and downloads do: a bad deflate block (zlib.error), a cut (EOFError), bytes
    changed inside (a CRC or stream error)."""
    raw = bytearray(path.read_bytes())
    if how == "bad block":
        raw[10] |= 0x06  # the first deflate block's type becomes 3, which does not exist (gzip.compress writes no name)
    elif how == "cut":
        raw = raw[: len(raw) // 2]
    else:
        for i in range(len(raw) // 2, len(raw) // 2 + 40):
            raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name, how", [("barcodes.txt.gz", "bad block"), ("barcodes.txt.gz", "cut"),
                                       ("barcodes.txt.gz", "changed"), ("matrix.mtx.gz", "bad block"),
                                       ("labels.txt.gz", "bad block")])
def test_a_corrupt_gzip_stream_is_one_line(tmp_path, name, how):
    folder = copy_demo(tmp_path)
    plain = folder / name.removesuffix(".gz")
    if name == "matrix.mtx.gz":
        plain.write_bytes(gzip.decompress((folder / name).read_bytes()))
    (folder / name).write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    corrupt(folder / name, how)
    labels = [folder / "labels.txt.gz"] if name == "labels.txt.gz" else []
    one_error_line(ae(folder, tmp_path / "out", *labels, *FAST), name, "corrupt or truncated")


def test_a_header_that_claims_two_billion_cells_is_refused_at_once(tmp_path):
    folder = copy_demo(tmp_path)
    (folder / "matrix.mtx.gz").unlink()
    (folder / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n3000 2000000000 3\n1 1 1\n")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.argv = sys.argv[1:]\n"
                           "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
                           "finally: print('peak_kb', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], "
                           "file=sys.stderr)",
                           str(REPO / "AE.py"), "2", str(folder), str(tmp_path / "out"), "4"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and time.perf_counter() - started < 30
    assert "barcodes.txt: has 800 barcodes but matrix.mtx has 2000000000 columns" in done.stderr
    # VmHWM, this process's own peak (ru_maxrss would carry over the forking pytest's)
    assert int(done.stderr.split("peak_kb")[1]) < 600 * 1024  # no gigabytes allocated


@pytest.mark.parametrize("entries", ["2000000000", "99999"])
def test_more_entries_than_the_file_can_hold_is_refused(tmp_path, entries):
    folder = copy_demo(tmp_path)
    (folder / "matrix.mtx.gz").unlink()
    (folder / "matrix.mtx").write_text(f"%%MatrixMarket matrix coordinate integer general\n3000 800 {entries}\n1 1 1\n")
    one_error_line(ae(folder, tmp_path / "out", *FAST), "matrix.mtx", "corrupt or truncated")


def test_compressed_folder_files_and_an_mtx_of_any_name_are_read(tmp_path):
    import bz2
    import lzma

    import scatac

    folder = tmp_path / "sample"
    folder.mkdir()
    (folder / "peaks.bed.xz").write_bytes(lzma.compress((DEMO / "peaks.txt").read_bytes()))
    (folder / "barcodes.tsv.bz2").write_bytes(bz2.compress((DEMO / "barcodes.txt").read_bytes()))
    (folder / "sample1.mtx.bz2").write_bytes(bz2.compress(gzip.decompress((DEMO / "matrix.mtx.gz").read_bytes())))
    expected = scatac.read(DEMO)
    adata = scatac.read(folder / "sample1.mtx.bz2")
    assert adata.shape == expected.shape and (adata.X != expected.X).nnz == 0
    assert list(adata.obs_names) == list(expected.obs_names)


def test_binary_garbage_and_another_encoding_are_one_line(tmp_path):
    folder = copy_demo(tmp_path)
    (folder / "barcodes.txt").write_bytes(os.urandom(4000))
    one_error_line(ae(folder, tmp_path / "out", *FAST), "barcodes.txt")
    labels = tmp_path / "labels.txt"
    labels.write_bytes("".join(f"{b}\tcellule_été\n" for b in (DEMO / "barcodes.txt").read_text().split()).encode("latin-1"))
    one_error_line(ae(DEMO, tmp_path / "out", labels, *FAST), "labels.txt", "not UTF-8")


def test_a_bom_and_crlf_line_ends_are_read_as_text(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"\xef\xbb\xbf" + (DEMO / "labels.txt").read_text().replace("\n", "\r\n").encode())
    done = ae(DEMO, tmp_path / "out", labels, *FAST)
    assert done.returncode == 0, done.stderr
    assert "label" in (tmp_path / "out" / "cluster_assignments.txt").read_text().splitlines()[0]


# --------------------------------------------------------------------------
# Labels read as they are meant, refused when they cannot be cell types; figures bounded whatever they are
# --------------------------------------------------------------------------
def test_space_separated_labels_are_joined_by_barcode_with_a_warning(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text((DEMO / "labels.txt").read_text().replace("\t", " "))
    done = ae(DEMO, tmp_path / "out", labels, *FAST)
    assert done.returncode == 0, done.stderr
    assert "separated by spaces" in done.stderr
    assert "n_clusters\t6" in (tmp_path / "out" / "scores.tsv").read_text()  # six types, not 800


@pytest.mark.parametrize("kind", ["ids", "barcodes"])
def test_labels_that_cannot_be_cell_types_are_refused(tmp_path, kind):
    barcodes = (DEMO / "barcodes.txt").read_text().split()
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{f'cell{i}' if kind == 'ids' else b}\n" for i, b in enumerate(barcodes)))
    one_error_line(ae(DEMO, tmp_path / "out", labels, *FAST), "labels.txt", "ids" if kind == "ids" else "barcodes")


def test_a_confusion_figure_with_many_labels_stays_small(tmp_path):
    import matplotlib.image

    barcodes = (DEMO / "barcodes.txt").read_text().split()
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{b}\ttype{i % 200}\n" for i, b in enumerate(barcodes)))  # 200 types: plausible
    done = ae(DEMO, tmp_path / "out", labels, *FAST)
    assert done.returncode == 0, done.stderr
    image = matplotlib.image.imread(tmp_path / "out" / "confusion_matrix.png")
    assert image.shape[0] * image.shape[1] < 4000 * 4000


# --------------------------------------------------------------------------
# compare.py: a method's own error is its row; method folders replaced, never written through
# --------------------------------------------------------------------------
SMALL = ["--ae-epochs", "2", "--methods", "AE,NMF", "--no-snapatac2", "--threads", "1", "--seeds", "1", "--no-umap"]


def test_a_methods_own_input_error_is_its_row(tmp_path, monkeypatch):
    def refuses(*args, **kwargs):
        raise InputError("rank", "must not exceed the number of cells kept (3)")

    monkeypatch.setitem(compare.FIT, "NMF", refuses)
    compare.main([str(DEMO), str(tmp_path / "out"), "4", str(DEMO / "labels.txt"), *SMALL])
    rows = {line.split("\t")[0]: line for line in (tmp_path / "out" / "comparison.tsv").read_text().splitlines()}
    assert "failed: InputError" in rows["NMF"] and rows["AE"].endswith("ok") and rows["LSI"].endswith("ok")


def test_method_folders_are_replaced_not_written_through(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "feature.txt").write_text("someone else's\n")
    (out / "AE").symlink_to(elsewhere)
    compare.main([str(DEMO), str(out), "4", str(DEMO / "labels.txt"), *SMALL])
    assert (elsewhere / "feature.txt").read_text() == "someone else's\n" and list(elsewhere.iterdir()) == [elsewhere / "feature.txt"]
    assert (out / "AE").is_dir() and not (out / "AE").is_symlink() and (out / "AE" / "feature.txt").exists()
    assert leftovers(out) == []


def test_a_file_named_like_a_method_folder_is_refused_before_fitting(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "NMF").write_text("not a folder\n")
    one_error_line(run_in_process("compare.py", DEMO, out, 4, *SMALL), "NMF", "not a folder")
