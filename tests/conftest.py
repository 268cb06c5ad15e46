"""Shared test helpers: where the repo and the real data are, how to run a script, the data as AnnData."""
import os
import subprocess
import sys
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
    """Run one of the suite's scripts with this interpreter; returns the finished process (text output)."""
    command = [sys.executable, str(REPO / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


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
