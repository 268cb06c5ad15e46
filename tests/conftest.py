"""Shared test helpers: where the repo and the real data are, and how to run a script."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO = REPO / "data" / "demo"
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


@pytest.fixture
def demo() -> Path:
    return DEMO
