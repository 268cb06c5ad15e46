"""Shared test helpers: where the repo and the real data are, how to run a script, the data as AnnData."""
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO = REPO / "data" / "demo"
README_PATH = REPO / "README.md"
sys.path.insert(0, str(REPO))


def shared_path(name: str) -> Path:
    """Path of a real data set under ../shared/data; skip when absent unless SCATAC_REQUIRE_SHARED=1."""
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("SCATAC_REQUIRE_SHARED") == "1":
            pytest.fail(f"{path} is missing and SCATAC_REQUIRE_SHARED=1")
        pytest.skip(f"{path} not present")
    return path


def run_script(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of the suite's scripts with this interpreter; returns the finished process (text output).

    A new process costs about 5 s of imports before any work (and 13 s more with UMAP): where the process itself is
    not the point, run_in_process runs the same script in this one."""
    command = [sys.executable, str(REPO / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


# --------------------------------------------------------------------------
# A script run in this process: run_script's twin, without a new interpreter
# --------------------------------------------------------------------------
@contextlib.contextmanager
def _captured_output(into: dict):
    """Everything written to stdout and stderr inside, by Python (sys.stdout/sys.stderr, log handlers made earlier) or
    by C code (file descriptors 1 and 2), in the order written, as a process's pipes would hold it: into['stdout'],
    into['stderr']."""
    sys.stdout.flush()
    sys.stderr.flush()
    targets = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    saved_fds, saved_streams, moved = [os.dup(1), os.dup(2)], (sys.stdout, sys.stderr), []
    try:
        os.dup2(targets[0].fileno(), 1)
        os.dup2(targets[1].fileno(), 2)
        # line-buffered text streams on the redirected descriptors: Python's and C's writes interleave as in a process
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        # log handlers made earlier write to the streams of their day; a process's would write to its stderr
        for handler in _stream_handlers():
            if handler.stream in (*saved_streams, sys.__stdout__, sys.__stderr__):
                moved.append((handler, handler.setStream(sys.stderr)))
        yield
    finally:
        for handler, stream in reversed(moved):
            handler.setStream(stream)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        for name, target in zip(("stdout", "stderr"), targets):
            target.seek(0)
            into[name] = target.read().decode("utf-8", errors="replace")
            target.close()


def _stream_handlers() -> list:
    """Every logging.StreamHandler of the root logger and the named ones (pytest's own capture handlers aside)."""
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    return [handler for logger in loggers for handler in logger.handlers
            if type(handler) is logging.StreamHandler]


def _set_by_pytest(entry) -> bool:
    """A warnings filter pytest adds around each test (show every DeprecationWarning): not a new process's."""
    action, message, category, module, _ = entry
    return (action == "always" and message is None and module is None
            and category in (DeprecationWarning, PendingDeprecationWarning))


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Print a warning on stderr as a script's interpreter does (pytest would otherwise collect it silently)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _process_state():
    """Put back, after a run in this process, what a run changes for the whole process and a process would take
    with it when it ends: the current folder, torch's threads, deterministic mode and generator, Python's and NumPy's
    generators, signal handlers, the environment, the root logger and matplotlib's backend."""
    import random

    import numpy as np
    import torch

    cwd, environ = os.getcwd(), dict(os.environ)
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    logger_state = (root.level, list(root.handlers))
    backend = _matplotlib_backend()
    try:
        os.chdir(REPO)  # where run_script runs a script
        yield
    finally:
        os.chdir(cwd)
        if dict(os.environ) != environ:
            os.environ.clear()
            os.environ.update(environ)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        for signum, handler in handlers.items():
            if handler is not None and signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)
        root.setLevel(logger_state[0])
        root.handlers[:] = logger_state[1]
        if backend is not None and _matplotlib_backend() != backend:  # scatac.pl chooses Agg
            pyplot = sys.modules.get("matplotlib.pyplot")
            if pyplot is not None:
                pyplot.switch_backend(backend)  # the one given, or the one matplotlib's "auto" resolves to
            dict.__setitem__(sys.modules["matplotlib"].rcParams, "backend", backend)


def _matplotlib_backend():
    """matplotlib's backend setting as it stands (None before matplotlib is imported), without resolving it."""
    matplotlib = sys.modules.get("matplotlib")
    return None if matplotlib is None else dict.__getitem__(matplotlib.rcParams, "backend")


def run_in_process(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """run_script's twin in this process: the script's own entry point (scatac.cli.run_cli on its method, or
    compare.main) with the same arguments, from the repository root; a CompletedProcess with the exit status, the
    stdout and the stderr the process would have had (a traceback and status 1 for an exception that would have
    ended it). Saves the new interpreter's imports (about 5 s) and umap-learn's compile (13 s) of every run.

    Not for what needs a process of its own: signals, kills, locks between two runs, torchrun, a process's memory
    (run_script for those); each script's command line itself is tested by a run_script test too. `timeout` is
    accepted for run_script's signature and not enforced."""
    import traceback

    import common
    import compare
    from scatac import cli, methods

    argv = [str(arg) for arg in args]
    entry = (compare.main,) if script == "compare.py" else (common.run_method, methods.ALL[script.removesuffix(".py")])
    output = {}
    with _process_state(), _captured_output(output), warnings.catch_warnings():
        warnings.filters[:] = [kept for kept in warnings.filters if not _set_by_pytest(kept)]
        warnings.showwarning = _show_warning
        try:
            cli.run_cli(*entry, argv)
            status = 0
        except SystemExit as exc:  # as the interpreter ends on it
            if exc.code is None or isinstance(exc.code, int):
                status = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                status = 1
        except Exception:
            traceback.print_exc()
            status = 1
    return subprocess.CompletedProcess([script, *argv], status, output["stdout"], output["stderr"])


def read_scores(outdir: Path) -> dict:
    scores = {}
    for line in (Path(outdir) / "scores.tsv").read_text().splitlines()[1:]:
        key, value = line.split("\t")
        scores[key] = float(value)
    return scores


def labelled(folder: Path):
    """`folder` read with its labels.txt and filtered as every script filters: an AnnData of counts."""
    import scatac

    adata = scatac.read(folder, labels=folder / "labels.txt")
    scatac.pp.filter(adata)
    return adata


def train_data(adata, transform: str = "tfidf"):
    """What an autoencoder sees of `adata`: the transformed counts and each cell's depth."""
    from scatac.batches import TrainData

    return TrainData.from_counts(adata.X, transform)


def resolved(method: str, **given):
    """A method's RunOptions (network, training, schedule): its card's defaults, `given` in their place."""
    from scatac import methods

    return methods.ALL[method].resolve(given)


def cpu_trainer():
    """A quiet CPU trainer on one thread (tests run beside each other on two cores)."""
    import torch

    from scatac.train import Trainer

    torch.set_num_threads(1)
    return Trainer(device=torch.device("cpu"), progress=False)


@pytest.fixture
def demo() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def demo_adata():
    """The demo data, labelled and filtered (800 cells x 2,366 peaks). Tests must not change it: copy first."""
    return labelled(DEMO)
