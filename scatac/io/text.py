"""Reading text files as users have them: plain, .gz, .bz2 or a one-file .zip; UTF-8 with or without a BOM; LF or
CRLF. Every failure (corrupt or truncated stream, binary garbage, another encoding) is one InputError naming the file."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

from ..errors import fail

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip")
# what a broken stream raises: gzip's BadGzipFile and bz2's errors are OSErrors, a truncated one EOFError
READ_ERRORS = (OSError, EOFError, UnicodeDecodeError, zlib.error, zipfile.BadZipFile, lzma.LZMAError)


def open_binary(path: Path):
    """`path` opened for reading bytes, decompressed by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".zip":
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.namelist() if not m.endswith("/")]
        if len(members) != 1:
            fail(path, f"a .zip must hold exactly one file, this one holds {len(members)}")
        return archive.open(members[0])
    return open(path, "rb")


def open_text(path: Path):
    """Text lines of `path`: UTF-8, a BOM dropped, CRLF read as LF."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline=None)


def read_problem(exc: BaseException) -> str:
    """What went wrong reading a file, in a few words."""
    if isinstance(exc, UnicodeDecodeError):
        return f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): binary or another encoding"
    if isinstance(exc, (EOFError, zlib.error, zipfile.BadZipFile, lzma.LZMAError, gzip.BadGzipFile)) or \
            "compressed" in str(exc).lower() or "data stream" in str(exc).lower():
        kind = "zlib" if isinstance(exc, zlib.error) else exc.__class__.__name__
        return f"is corrupt or truncated ({kind}: {exc})"
    return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"


def read_lines(path: Path) -> list:
    """The non-blank lines of a text file, line ends removed."""
    try:
        with open_text(path) as handle:
            return [line.rstrip("\r\n") for line in handle if line.strip()]
    except READ_ERRORS as exc:
        fail(path, read_problem(exc))


BED_HEADER_STARTS = ("#", "track", "browser")  # UCSC BED header lines, which name no peak
# the feature_type values Cell Ranger (ATAC, ARC, multi) writes; a third column of anything else is not a type
TENX_FEATURE_TYPES = {"Peaks", "Gene Expression", "Antibody Capture", "CRISPR Guide Capture", "Multiplexing Capture",
                      "Custom"}


def read_features(path: Path) -> tuple[list, list | None]:
    """Peak names from a peaks or features file, and each one's feature type where the file gives one.

    A BED-like file (chrom, start, end) names peaks chrom:start-end, as Cell Ranger and Signac do, and its
    header lines (#, track, browser) are skipped. A 10x features.tsv (id, name, feature_type[, chrom, start,
    end], Cell Ranger ARC's six columns) gives ids and types ("Peaks", "Gene Expression", ...). Else the
    first column, types None.
    """
    names, types = [], []
    for line in read_lines(path):
        if line.startswith(BED_HEADER_STARTS):
            continue
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1].isdigit() and fields[2].isdigit():
            names.append(f"{fields[0]}:{fields[1]}-{fields[2]}")
        else:
            names.append(fields[0])
            types.append(fields[2] if len(fields) >= 3 else None)
    if len(types) != len(names) or not set(types) <= TENX_FEATURE_TYPES:
        return names, None
    return names, types


def without_compression(name: str) -> str:
    """A file name without its compression suffix: 'peaks.bed.gz' -> 'peaks.bed'."""
    for suffix in COMPRESSED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of `names` in `folder`, plain or compressed (any of COMPRESSED_SUFFIXES)."""
    for name in names:
        for candidate in (folder / name, *(folder / (name + suffix) for suffix in COMPRESSED_SUFFIXES)):
            if candidate.exists():
                return candidate
    return None
