"""Writing files so that a reader never sees half of one: temporary names renamed into place, whole
folders staged beside their final place, output folders checked before any work."""
from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from .errors import fail

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(final_path):
    """Yield a temporary path next to `final_path`; rename it into place only if the block succeeds."""
    final_path = Path(final_path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the user's usual mode
    try:
        yield tmp
        os.replace(tmp, final_path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_table(path, header: Sequence[str], rows: Iterable[Sequence]):
    """A tab-separated table with a header line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def format_float(value) -> str:
    return f"{float(value):.6g}"


def save_figure(fig, path):
    """Save a matplotlib figure atomically (format from the suffix) and free it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip("."))
    plt.close(fig)


def check_outdir(outdir) -> Path:
    """Refuse, before any work, an output path that is a file or lies where nothing can be written."""
    outdir = Path(outdir)
    if str(outdir).strip() == "":
        fail("outdir", "no output folder given")
    if outdir.exists() and not outdir.is_dir():
        fail(outdir, "output path exists and is not a folder")
    existing = outdir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        fail(outdir, f"cannot be made: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(outdir, f"cannot be written: no write permission in {existing}")
    return outdir


def prepare_outdir(outdir) -> tuple[Path, bool]:
    """Create `outdir` if missing and check it is writable; returns (path, created)."""
    outdir = check_outdir(outdir)
    created = False
    try:
        if not outdir.exists():
            outdir.mkdir(parents=True)
            created = True
        probe = tempfile.NamedTemporaryFile(dir=outdir, prefix=".write-test.", delete=True)
        probe.close()
    except OSError as exc:
        fail(outdir, f"output folder cannot be written ({exc.strerror or exc})")
    return outdir, created


@contextlib.contextmanager
def output_guard(outdir: Path, created: bool):
    """If the run fails after the output folder was made, remove it again when it is still empty."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            if created and not any(outdir.iterdir()):
                outdir.rmdir()
        raise


@contextlib.contextmanager
def staged_folder(final):
    """Write a folder's files into a hidden folder next to `final`, moved into place only when the
    block succeeds (replacing an older `final`); on failure the partial folder is removed, so the
    folder is always complete or absent."""
    final = Path(final)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(stage, 0o777 & ~_UMASK)
    try:
        yield stage
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


