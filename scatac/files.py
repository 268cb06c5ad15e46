"""Writing results so that nobody ever sees half of them or a mix of two runs.

A run's output folder is checked before any work (check_outdir), held by one run at a time
(output_lock), and written as a whole: every file goes into a fresh staging folder beside it, which,
once complete and flushed to disk, takes the old folder's place in one atomic exchange
(staged_folder). A crash at any moment leaves the old complete result or the new one; an error or a
signal leaves the old one and no temporary files.
"""
from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from .errors import InputError, fail

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


PROTECTED = ("/proc", "/sys", "/dev")  # kernel file systems: nothing of ours belongs there


def check_outdir(outdir, known: Iterable[str] = ()) -> Path:
    """Refuse, before any work, an output path that is a file, lies where nothing can be written, or is a
    folder holding something this suite did not write (`known`: the names a result holds), which
    replacing it would destroy. Returns the folder to write: a symbolic link to a folder is followed, so the
    result replaces the link's target and the link stays."""
    if str(outdir).strip() == "":
        fail("outdir", "no output folder given")
    outdir = Path(outdir)
    resolved = outdir.resolve()
    if any(resolved == Path(p) or Path(p) in resolved.parents for p in PROTECTED):
        fail(outdir, f"is inside {next(p for p in PROTECTED if Path(p) in [resolved, *resolved.parents])}, "
                     "a kernel file system: choose a folder on a disk")
    if outdir.exists() and not outdir.is_dir():
        fail(outdir, "output path exists and is not a folder")
    if outdir.is_symlink():  # a link the user made to put results elsewhere (outputs -> /scratch/...): follow it
        outdir = outdir.resolve()
    existing = outdir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        fail(outdir, f"cannot be made: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(outdir, f"cannot be written: no write permission in {existing} (or a read-only file system)")
    if outdir.is_dir():
        foreign = sorted(p.name for p in outdir.iterdir() if p.name not in set(known))
        if known and foreign:
            fail(outdir, f"holds {foreign[0]!r}, which no run of this suite writes: not replacing a folder that may "
                         "hold your own files (choose another output folder, or empty this one)")
    return outdir


def _stale(final: Path) -> list:
    """Staging and old folders that a killed run left beside `final`."""
    return [p for p in final.parent.glob(f".{final.name}.*") if p.suffix in (".partial", ".old") and p.is_dir()]


def _recover(final: Path):
    """Where renames cannot exchange two folders, a crash between moving the old result aside and moving the new
    one in leaves no `final`, and the old result in a `.old` folder beside it: put that back."""
    if final.exists():
        return
    for old in _stale(final):
        if old.suffix == ".old" and (old / final.name).is_dir():
            os.replace(old / final.name, final)
            return


@contextlib.contextmanager
def output_lock(outdir):
    """Hold `outdir` for this run: a second run into it is refused at once with one line.

    An flock on a file beside the folder, which the kernel releases when the process ends however
    it ends (a killed run never leaves it stuck); the file is removed before the lock is released,
    and a lock taken on a file that another run has just removed is taken again. Leftovers of a
    killed run beside the folder are removed once the lock is held (an old result that a crash left moved
    aside is put back first). Missing parent folders are made,
    and removed again if the run fails before writing into them.
    """
    outdir = Path(outdir)
    made = []
    for parent in reversed([outdir.parent, *outdir.parent.parents]):
        if not parent.exists():
            try:
                parent.mkdir()
            except OSError as exc:
                fail(outdir, f"cannot be made ({exc.strerror or exc})")
            made.append(parent)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock, the rest holds
        fcntl = None
    path = outdir.parent / f".{outdir.name}.lock"
    fd = None
    try:
        while fcntl is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                fd = None
                fail(outdir, f"another run (process {holder}) is writing this folder; wait for it to end or choose "
                             "another output folder")
            if path.exists() and os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
            os.close(fd)
        if fd is not None:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        _recover(outdir)
        for leftover in _stale(outdir):
            shutil.rmtree(leftover, ignore_errors=True)
        yield outdir
        made = []  # written into: they stay
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
        for parent in reversed(made):  # after the lock file, which lies in the last of them
            with contextlib.suppress(OSError):
                parent.rmdir()


def ensure_space(path, needed_bytes: int):
    """Refuse to start writing `path` when its disk has not `needed_bytes` free (a write that fills the disk
    can crash a native library, HDF5's, instead of raising)."""
    free = shutil.disk_usage(Path(path).parent).free
    if free < needed_bytes:
        raise OSError(errno.ENOSPC, f"No space left on device (needs about {needed_bytes / 2**20:,.0f} MiB, "
                                    f"{free / 2**20:,.0f} MiB free)", str(path))


def _fsync_tree(folder: Path):
    for root, _, names in os.walk(folder):
        for name in names:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path):
    with contextlib.suppress(OSError):  # some file systems do not sync folders
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        return libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    except (OSError, AttributeError):
        return False


def _put_in_place(stage: Path, final: Path):
    """`stage` becomes `final`. An existing `final` is exchanged with it atomically, or, where that cannot be
    done, moved aside first (a crash between the two renames then leaves it in the .old folder beside)."""
    if not final.exists():
        os.replace(stage, final)
    elif _exchange(stage, final):
        shutil.rmtree(stage, ignore_errors=True)  # it holds the old result now
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        os.replace(final, old / final.name)
        os.replace(stage, final)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def staged_folder(final):
    """Yield a fresh hidden folder beside `final` to write a whole result into; when the block ends well its
    files are flushed to disk and it takes `final`'s place as a whole (put in place atomically), so no file
    of an older result survives beside the new ones. On an error or a signal the staging folder is
    removed and `final` is left as it was. An OSError while writing (a full disk, say) becomes one
    InputError naming the file as it would have been in `final`."""
    final = Path(final)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(stage, 0o777 & ~_UMASK)
    try:
        try:
            yield stage
            _fsync_tree(stage)
            _put_in_place(stage, final)
        except OSError as exc:
            name = Path(exc.filename) if exc.filename else None
            where = final / name.relative_to(stage) if name is not None and stage in name.parents else final
            raise InputError(where, f"cannot be written: {exc.strerror or exc}") from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
