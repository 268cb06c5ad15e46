"""Where and how torch runs: the device, the seeds, the threads, the allocator."""
from __future__ import annotations

import os
import random
import sys

import numpy as np

from .errors import fail, warn


def select_device(requested: str = "auto"):
    """The torch device to train on: cuda, then mps, then cpu.

    Parameters
    ----------
    requested : {'auto', 'cpu', 'cuda', 'mps'}
        'auto' picks the first available; the others force one.

    Returns
    -------
    torch.device

    Raises
    ------
    scatac.InputError
        cuda or mps was requested and is not there.
    """
    import torch

    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        fail("--device", "cuda was requested but torch sees no CUDA GPU")
    if requested == "mps" and not has_mps:
        fail("--device", "mps was requested but this machine has no Apple GPU")
    return torch.device(requested)


def set_seed(seed: int):
    """Seed Python's, NumPy's and torch's generators, and ask torch for deterministic kernels where it has them.

    So that a seed reproduces the features on CPU.

    Parameters
    ----------
    seed : int
        The seed.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Deterministic kernels where torch has them, so a seed reproduces features on CPU.
    torch.use_deterministic_algorithms(True, warn_only=True)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one).

    Returns
    -------
    int
    """
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(threads: int | None):
    """CPU threads for torch; more threads than CPUs are cut to the CPUs with a warning.

    torch's threads spin-wait for each other, so more of them than CPUs slows an epoch down by orders of magnitude
    (the documentation's benchmarks page).

    Parameters
    ----------
    threads : int or None
        The threads; None (or 0) leaves torch's choice.
    """
    if threads:
        import torch

        cpus = usable_cpus()
        if threads > cpus:
            warn(f"--threads {threads} is more than the {cpus} CPUs this process may use: using {cpus}")
            threads = cpus
        torch.set_num_threads(threads)


_ALLOCATOR_TUNED = False


def keep_freed_memory():
    """Have glibc serve every allocation from its heap and keep freed memory for reuse.

    By default glibc gives allocations above 32 MiB their own mmap and unmaps them on free, so each training step's
    fresh gradient of a 100,000 x 512 layer page-faults in anew: a sizeable share of a CPU step (measured on the
    documentation's benchmarks page). Applies to the whole process from here on; a no-op off glibc (macOS, musl), on
    a second call, and when SCATAC_DEFAULT_MALLOC=1 is set.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("SCATAC_DEFAULT_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):
        pass


__all__ = ["select_device", "set_seed", "set_threads", "usable_cpus", "keep_freed_memory"]
