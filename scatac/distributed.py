"""Training across processes and machines with torch.distributed, as `torchrun` starts them.

    torchrun --standalone --nproc-per-node 2 AE.py 20 data/demo out 10 data/demo/labels.txt
    torchrun --nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --nproc-per-node 4 AE.py ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous for each process it starts; `setup`
reads them and joins the process group: gloo on CPU, NCCL on CUDA (one GPU per local rank). Nothing
here launches processes or opens sockets of its own: torch does both. A process started without
torchrun is a world of one, and every function here is then a no-op that returns its input, so the
single-process path is the same code.

What a distributed run does (scatac.train): each rank trains on its own shard of the cells
(`shard`), with `batch_size / world_size` cells a step, and DistributedDataParallel averages the
gradients, so a step sees the same global batch and learning rate as one process; the epoch's
records are summed over ranks (`sum_over_ranks`); features are encoded shard by shard and gathered
(`gather_rows`); rank 0 alone writes results and prints progress. A collective that waits longer
than COLLECTIVE_TIMEOUT (a rank that died or hangs) fails on every other rank, and torchrun stops
the whole job when any rank exits with an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

COLLECTIVE_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class World:
    """The processes training together, as this process sees them.

    Attributes
    ----------
    rank : int
        This process's number, 0 to size - 1.
    size : int
        The processes training together.
    local_rank : int
        Its number on this machine (which GPU it takes).
    is_distributed : bool
        More than one process.
    is_main : bool
        Rank 0: the process that prints and writes results.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def launched_world() -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK); a world of one without it.

    Returns
    -------
    World
    """
    return World(rank=_env_int("RANK", 0), size=_env_int("WORLD_SIZE", 1), local_rank=_env_int("LOCAL_RANK", 0))


def current() -> World:
    """The world of the process group this process has joined; a world of one when it has joined none.

    Returns
    -------
    World
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=_env_int("LOCAL_RANK", 0))
    return World()


def is_main() -> bool:
    """Whether this is the process that writes results and prints: rank 0, or the only process.

    Returns
    -------
    bool
    """
    return launched_world().is_main


def setup(device) -> World:
    """Join the process group torchrun prepared, once: gloo for a CPU device, NCCL for CUDA (this rank's GPU).

    Parameters
    ----------
    device : torch.device
        The device the run trains on.

    Returns
    -------
    World
        The world joined; a world of one without torchrun.
    """
    import torch
    import torch.distributed as dist

    world = launched_world()
    if not world.is_distributed:
        return world
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return current()


def device_for(device, world: World):
    """The device this rank trains on: its own GPU (LOCAL_RANK) when the run is on CUDA.

    Parameters
    ----------
    device : torch.device
        The run's device.
    world : World
        The processes training together.

    Returns
    -------
    torch.device
    """
    import torch

    if device.type == "cuda" and world.is_distributed:
        return torch.device("cuda", world.local_rank)
    return device


def teardown():
    """Leave the process group, if this process joined one, once every rank has come to leave it.

    The barrier first: a rank that tears its gloo pairs down while another is still finishing the last
    collective can make that rank abort, and torchrun then fails the whole run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(rows: np.ndarray, world: World, seed: int) -> np.ndarray:
    """This rank's cells among `rows`: a fixed split, the same for a seed on every rank, disjoint between ranks.

    The cells are dealt out in an order drawn from the seed (so a shard is not one part of the file, whose cells may be
    sorted by type); every rank gets the same number, n // size: the at most size - 1 cells left over are not trained
    on (they are still encoded).

    Parameters
    ----------
    rows : numpy.ndarray
        (n,) int64, the cells to train on.
    world : World
        The processes training together.
    seed : int
        The deal's seed.

    Returns
    -------
    numpy.ndarray
        (n // size,) int64, sorted; `rows` itself in a world of one.
    """
    if not world.is_distributed:
        return rows
    order = np.random.default_rng([seed, 11]).permutation(len(rows))
    per_rank = len(rows) // world.size
    return np.sort(rows[order[world.rank :: world.size][:per_rank]])


def rank_batch_size(batch_size: int, world: World) -> int:
    """The cells a step on one rank takes, so that the ranks' steps together make the global `batch_size`.

    Parameters
    ----------
    batch_size : int
        The global batch.
    world : World
        The processes training together.

    Returns
    -------
    int
        batch_size // world.size, at least 1.
    """
    return max(1, batch_size // world.size)


def sum_over_ranks(values: dict, world: World) -> dict:
    """Numbers summed over the ranks, every rank getting the sums: an epoch's loss terms and cell counts.

    Parameters
    ----------
    values : dict
        {name: number} of this rank.
    world : World
        The processes training together.

    Returns
    -------
    dict
        {name: float} summed over the ranks; `values` itself in a world of one.
    """
    if not world.is_distributed or not values:
        return values
    import torch
    import torch.distributed as dist

    names = sorted(values)
    device = _collective_device()
    totals = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return dict(zip(names, totals.cpu().tolist()))


def all_equal(value: float, world: World) -> bool:
    """Whether every rank holds the same number: a check that their decisions (to stop, say) agree.

    Parameters
    ----------
    value : float
        This rank's number.
    world : World
        The processes training together.

    Returns
    -------
    bool
    """
    if not world.is_distributed:
        return True
    import torch
    import torch.distributed as dist

    device = _collective_device()
    low = torch.tensor([float(value)], dtype=torch.float64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(low.item() == high.item())


def gather_rows(block: np.ndarray, rows: np.ndarray, n_rows: int, world: World) -> np.ndarray:
    """Every rank's rows of a matrix put together, on every rank.

    Parameters
    ----------
    block : numpy.ndarray
        (len(rows), d), this rank's part.
    rows : numpy.ndarray
        (len(rows),) their row numbers: disjoint between ranks, together covering 0 .. n_rows - 1.
    n_rows : int
        The whole matrix's rows.
    world : World
        The processes training together.

    Returns
    -------
    numpy.ndarray
        (n_rows, d), of block's dtype.
    """
    if not world.is_distributed:
        out = np.empty((n_rows,) + block.shape[1:], dtype=block.dtype)
        out[rows] = block
        return out
    import torch.distributed as dist

    parts = [None] * world.size
    dist.all_gather_object(parts, (np.asarray(rows), np.asarray(block)))
    out = np.empty((n_rows,) + block.shape[1:], dtype=block.dtype)
    for part_rows, part in parts:
        out[part_rows] = part
    return out


def gather_objects(value, world: World) -> list:
    """One small object from each rank, on every rank (a shard's summary).

    Parameters
    ----------
    value : object
        This rank's object (picklable).
    world : World
        The processes training together.

    Returns
    -------
    list
        [rank 0's value, rank 1's value, ...].
    """
    if not world.is_distributed:
        return [value]
    import torch.distributed as dist

    parts = [None] * world.size
    dist.all_gather_object(parts, value)
    return parts


def _collective_device():
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


__all__ = ["World", "launched_world", "current", "is_main", "setup", "teardown", "device_for", "shard",
           "rank_batch_size", "sum_over_ranks", "all_equal", "gather_rows", "gather_objects"]
