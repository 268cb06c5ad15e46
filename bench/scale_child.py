"""bench/scale_child.py: one method on one matrix, in its own process, for bench/scale.py.

    python bench/scale_child.py SPEC.json RESULT.json

SPEC names the matrix (a simulated .h5ad with obs["label"], or a labelled 10x folder), the method, its
decoder and batch size, the epochs (None: the method's defaults) and what to time; RESULT gets one
row of bench/scale.py's table. The path is a script's: scatac.read -> scatac.pp.filter ->
scatac.tl.<method> -> scatac.tl.cluster (-> scatac.tl.umap -> scatac.export). A train.Trainer
carries the limit on batches and the timing of each training call; --profile runs each call under
torch.profiler.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def maxrss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes)
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 2**20 if sys.platform == "darwin" else value / 1024


def linear_flops_per_cell(model, nnz_per_cell: float) -> tuple[float, float, list]:
    """Training FLOPs per cell of the model's layers: (dense nn.Linear FLOPs, sparse PeakLinear FLOPs,
    the dense layers' (in, out) shapes).

    Dense layer, per cell: forward 2*in*out, grad-weight 2*in*out, grad-input 2*in*out.
    PeakLinear (the first layer, reading the sparse input): forward and grad-weight 2*nnz*out
    each, no grad-input (its input is data).
    """
    import torch.nn as nn

    try:
        from scatac.nn import PeakLinear
    except ImportError:  # a checkout from before the package (or the sparse first layer), for a before/after table
        try:
            from AE import PeakLinear
        except ImportError:
            PeakLinear = ()

    dense, sparse, shapes = 0.0, 0.0, []
    for module in model.modules():
        if isinstance(module, PeakLinear):
            sparse += 4 * nnz_per_cell * module.out_features
        elif isinstance(module, nn.Linear):
            shapes.append((module.in_features, module.out_features))
            dense += 6 * module.in_features * module.out_features
    return dense, sparse, shapes


def mm_reference_gflops(shapes, batch_size: int, repeats: int = 3) -> float:
    """GFLOP/s of plain torch.mm doing one training step's products of `shapes` at `batch_size`."""
    import torch

    gen = torch.Generator().manual_seed(0)
    flops, elapsed = 0.0, float("inf")
    tensors = [(torch.rand(batch_size, n_in, generator=gen), torch.rand(n_in, n_out, generator=gen),
                torch.rand(batch_size, n_out, generator=gen)) for n_in, n_out in shapes]
    for _ in range(repeats):
        started = time.perf_counter()
        step_flops = 0.0
        for x, w, g in tensors:
            torch.mm(x, w)  # forward
            torch.mm(x.t(), g)  # grad weight
            torch.mm(g, w.t())  # grad input
            step_flops += 6 * x.shape[0] * x.shape[1] * w.shape[1]
        elapsed = min(elapsed, time.perf_counter() - started)
        flops = step_flops
    return flops / elapsed / 1e9


def profiling_trainer(**fields):
    """A Trainer that runs each train() call under torch.profiler and keeps the top operators' table."""
    import torch.profiler

    from scatac.train import Trainer

    class ProfilingTrainer(Trainer):
        def __post_init__(self):
            super().__post_init__()
            self.tables = []

        def train(self, model, data, *args, **kwargs):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
                history = super().train(model, data, *args, **kwargs)
            self.tables.append(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
            return history

    return ProfilingTrainer(**fields)


def epoch_seconds(calls: list, max_batches: int) -> tuple[float, bool]:
    """Seconds of one full epoch of each train() call (StackedAE: each stage), summed, and whether any was
    extrapolated from the first `max_batches` batches (from batches 2..N: the first pays one-off costs)."""
    per_epoch, limited_any = 0.0, False
    for call in calls:
        n_full = call["batches_per_epoch"]
        run = min(max_batches, n_full) if max_batches else n_full
        limited_any |= run < n_full
        if limited_any and call["steady_batches"] > 0:
            per_epoch += call["steady_seconds"] / call["steady_batches"] * n_full
        else:
            per_epoch += call["seconds"] / call["epochs"] * n_full / run
    return per_epoch, limited_any


def child(spec: dict) -> dict:
    base_rss = rss_mb()
    import compare
    import scatac
    from scatac import distributed, export, methods, runtime
    from scatac.train import Trainer, auto_batch_size

    runtime.set_threads(spec.get("threads"))
    out = {"status": "ok", "base_rss_mb": max(base_rss, rss_mb())}
    method = spec["method"]
    max_batches = spec.get("max_batches") or 0
    # under torchrun (bench/scale.py --processes N) every rank runs this; rank 0 writes the row
    world = distributed.setup(runtime.select_device(spec.get("device", "cpu")))
    device = distributed.device_for(runtime.select_device(spec.get("device", "cpu")), world)
    fields = dict(device=device, progress=False, max_batches=max_batches or None)
    trainer = profiling_trainer(**fields) if spec.get("profile") else Trainer(**fields)

    t0 = time.perf_counter()
    path = Path(spec["path"])
    streamed = bool(spec.get("streamed"))
    if streamed:  # the store stays on disk: the cells are read in blocks while training (scatac.streamed)
        import anndata

        adata = anndata.read_h5ad(path, backed="r")
    else:
        adata = scatac.read(path, label_key="label") if path.suffix == ".h5ad" else scatac.read(path, labels=path / "labels.txt")
    out["load_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if not streamed:  # a simulated store is written as it is trained on
        scatac.pp.filter(adata)
    out["filter_s"] = time.perf_counter() - t1
    out["cells_kept"], out["peaks_kept"] = adata.n_obs, adata.n_vars
    nnz = spec["nnz"] if streamed else adata.X.nnz

    options = {}
    if method in methods.ALL and methods.ALL[method].kind == "neural":
        card = methods.ALL[method]
        options = {name: spec["epochs"] for name in card.epoch_options} if spec["epochs"] else {}
        options.update({"batch_size": spec["batch_size"]} if spec.get("batch_size") else {})
        options.update({"decoder": spec["decoder"], "negatives": spec["negatives"]})
        if spec["epochs"] and not spec.get("batch_size") and spec["decoder"] == "sampled":
            # timing a few epochs: train on the batch a run at the method's own epochs would use
            longest = max(card.options[name].default for name in card.epoch_options)
            options["batch_size"] = auto_batch_size(adata.n_obs, longest, sampled=True)
        options["trainer"] = trainer
    elif method in ("NMF", "LSNMF"):
        options = {"max_iter": spec["nmf_max_iter" if method == "NMF" else "lsnmf_max_iter"]}
    t2 = time.perf_counter()
    model = compare.FIT[method](adata, spec["latent_dim"], seed=0, **options)
    out["fit_s"] = time.perf_counter() - t2

    if trainer.calls:
        out["decoder"], out["batch_size"] = adata.uns[method]["decoder"], adata.uns[method]["batch_size"]
        out["epochs"] = sum(call["epochs"] for call in trainer.calls)
        out["epoch_s"], limited = epoch_seconds(trainer.calls, max_batches)
        out["epoch_note"] = (f"~{max_batches}b" if limited else "full") + ("(sum of stages)" if method == "StackedAE" else "")
        if world.is_distributed:
            out["peak_rss_mb"] = maxrss_mb()  # the run's own, before the all-reduce below allocates a model's worth
            out["allreduce_s"] = allreduce_seconds(model, world)
            step_s = out["epoch_s"] / max(trainer.calls[-1]["batches_per_epoch"], 1)
            out["allreduce_share"] = out["allreduce_s"] / step_s
        if method == "AE" and not streamed:  # the reference products would dwarf a streamed run's memory
            call = trainer.calls[0]
            dense_flops, sparse_flops, shapes = linear_flops_per_cell(model, nnz / max(adata.n_obs, 1))
            achieved = (dense_flops + sparse_flops) * call["n_cells"] / out["epoch_s"] / 1e9  # AE has one train() call
            reference = mm_reference_gflops(shapes, call["batch_size"])
            out["achieved_gflops"], out["mm_gflops"] = achieved, reference
            out["mm_efficiency"] = achieved / reference
    elif method in ("NMF", "LSNMF"):
        details = adata.uns[method]["factorization"]
        n_iter = max(int(details.get("n_iter", 0) or 0), 1)
        out["epochs"] = n_iter
        out["epoch_s"] = details.get("fit_s", out["fit_s"]) / n_iter
        out["epoch_note"] = "per iteration"
    if spec.get("profile"):
        out["profile"] = [f"{method}, train() phase {i + 1}:\n{table}" for i, table in enumerate(trainer.tables)]

    if world.is_distributed:
        out["processes"] = world.size
        out["peak_rss_mb"] = max(distributed.gather_objects(out["peak_rss_mb"], world))  # the largest process's
        distributed.teardown()
        if not world.is_main:
            return None
    if streamed and max_batches:  # a few batches an epoch: the features mean nothing yet
        return _finish(out, t0, adata, model)
    t3 = time.perf_counter()
    scores = scatac.tl.cluster(adata, use_rep=f"X_{method}", labels_key="label", n_init=spec["n_init"])
    out["eval_s"] = time.perf_counter() - t3
    out["ARI"] = scores.get("ARI", float("nan"))
    if spec.get("umap"):
        t4 = time.perf_counter()
        scatac.tl.umap(adata, use_rep=f"X_{method}")
        out["umap_s"] = time.perf_counter() - t4
    if spec.get("export"):
        t5 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"scale_export_{method}_") as outdir:
            export.write_results(outdir, adata, method, labels_key="label", settings={"bench": "scale"})
            export.write_figures(outdir, adata, method, labels_key="label")
        out["export_s"] = time.perf_counter() - t5
    return _finish(out, t0, adata, model)


def _finish(out: dict, started: float, adata, model) -> dict:
    del model, adata
    out["total_s"] = time.perf_counter() - started
    out.setdefault("peak_rss_mb", maxrss_mb())
    return out


def allreduce_seconds(model, world, repeats: int = 3) -> float:
    """Seconds one all-reduce of a gradient the size of `model`'s parameters takes across the ranks (the best of
    `repeats`): what DistributedDataParallel adds to each step, measured apart from the step itself."""
    import torch
    import torch.distributed as dist

    n_values = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gradient = torch.zeros(n_values, device=next(model.parameters()).device)
    best = float("inf")
    for _ in range(repeats):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(gradient)
        best = min(best, time.perf_counter() - started)
    return best



if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = child(spec)
    if result is not None:  # rank 0's, or the only process's
        Path(sys.argv[2]).write_text(json.dumps(result))
