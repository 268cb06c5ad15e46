"""common.py: the spine every method script runs, step by step:

    check -> load -> labels -> filter -> transform + fit -> cluster and score -> UMAP -> write -> plot

Each step is one function of the scatac package (scatac.read, scatac.pp, scatac.tl,
scatac.export), the same ones a notebook calls; a script names only its method:
`common.main(scatac.methods.AE)`. Every option, the output folder and the matrix's header are
checked before the data are read, the data's own checks come before any progress line and before
training, and the results are written as a whole or not at all (scatac.files).

With --store PATH the load and filter steps become one: the kept cells and peaks are written into an on-disk
store (scatac.io.store.filtered_store; reused by later runs of the same input and filter) and the method trains
from it streamed, as a backed AnnData, never holding the matrix; under torchrun rank 0 writes it while the
other ranks wait.
"""
from __future__ import annotations

import time

from scatac import cli, export, files, io, params
from scatac.errors import info


def run_method(method, argv=None) -> dict:
    """Run `method` (a scatac.methods card) as its script does; returns the scores."""
    settings, options = cli.checked_arguments(method, argv)
    outdir = files.check_outdir(settings["outdir"], known=export.RESULT_FILES)
    if settings["store"] is not None:
        io.store.check_store_path(settings["store"], settings["data"], outdir=outdir,
                                  **io.store.store_keywords(settings, settings["labels"]))
    shape = io.peek_shape(settings["data"])
    if shape is not None:
        params.check_latent_size(settings["latent_dim"], *shape, source=settings["data"], kept=False)
    if settings["device"] not in ("auto", "cpu"):  # a GPU asked for and absent is known before loading
        from scatac import runtime

        runtime.select_device(settings["device"])
    from scatac import distributed

    waiting = _store_barrier(settings) if settings["store"] is not None else None
    if not distributed.is_main():  # under torchrun rank 0 alone holds the folder and writes it
        if waiting is not None:
            waiting()  # until rank 0 has written the store (or found it there)
        return _run(method, settings, options, outdir)
    with files.output_lock(outdir):
        seconds, note = {}, None
        if settings["store"] is not None:
            # written unless a store of the same input and filter is there; the line saying which waits for _run
            seconds["store_s"], note = io.store.prepare_store(settings["store"], settings["data"],
                                                              **io.store.store_keywords(settings, settings["labels"]))
            waiting()
        return _run(method, settings, options, outdir, seconds, note)


# how long the other ranks wait for rank 0 to write a store: writing one from an atlas takes far longer than the
# process group's timeout for a collective (which is there to notice a dead rank), and a rank that dies while
# writing ends the job through torchrun anyway
STORE_WAIT_HOURS = 24


def _store_barrier(settings: dict):
    """Join the process group early (under torchrun) and return a function that returns once every rank has
    called it: the other ranks wait in it while rank 0 writes the store. A world of one waits for nobody."""
    from datetime import timedelta

    from scatac import distributed, runtime

    world = distributed.setup(runtime.select_device(settings["device"]))
    if not world.is_distributed:
        return lambda: None
    import torch.distributed as dist

    # a group of its own, made now on every rank, with the long timeout: gloo whatever the training's backend is
    waiting_room = dist.new_group(backend="gloo", timeout=timedelta(hours=STORE_WAIT_HOURS))
    return lambda: dist.barrier(group=waiting_room)


def _run(method, settings: dict, options: dict, outdir, seconds: dict | None = None,
         store_note: str | None = None) -> dict:
    import scatac
    from scatac import distributed, runtime
    from scatac.evaluate import default_n_clusters

    seconds = dict(seconds or {})
    started = time.perf_counter()
    thresholds = {name: settings[name] for name in params.FILTER.params}
    if settings["store"] is not None:
        adata, loaded = _open_store(settings)
        summary = adata.uns["scatac"]["filter"]
    else:
        adata = scatac.read(settings["data"], labels=settings["labels"], verbose=False,
                            **{name: settings[name] for name in params.READ.params})
        loaded = f"loaded {adata.n_obs} cells x {adata.n_vars} peaks ({adata.X.nnz} non-zeros) from {settings['data']}"
        summary = scatac.pp.filter(adata, **thresholds, verbose=False)
    params.check_latent_size(settings["latent_dim"], adata.n_obs, adata.n_vars, source=settings["data"])
    for note in adata.uns["scatac"].get("read_notes", ()):  # after the data's checks: no progress line before an error
        info(note)
    if store_note is not None:
        info(store_note)
    info(f"{loaded} in {time.perf_counter() - started:.1f}s")
    info(scatac.pp.filter_message(summary, thresholds))
    labels_key = "label" if settings["labels"] or settings["label_key"] else None  # scatac.read put them there
    n_clusters = settings["n_clusters"] or default_n_clusters(adata.obs["label"] if labels_key else None)
    for name in method.sized_by_clusters:
        options[name] = options[name] or n_clusters
    seconds["load_filter_s"] = time.perf_counter() - started

    runtime.set_threads(settings["threads"])
    # under torchrun every rank loads and filters the same data, trains on its own shard of the cells, and
    # gets every cell's features back; rank 0 alone goes on to cluster, draw and write
    world = distributed.setup(runtime.select_device(settings["device"]))
    device = distributed.device_for(runtime.select_device(settings["device"]), world)
    ranks = f", {world.size} processes" if world.is_distributed else ""
    info(f"{method.name}: training on {device}{ranks} ({adata.n_obs} cells x {adata.n_vars} peaks, "
         f"latent_dim {settings['latent_dim']})")
    model = scatac.tl.FIT[method.name](adata, settings["latent_dim"], seed=settings["seed"], device=str(device), **options)
    distributed.teardown()
    if not world.is_main:
        return {}
    seconds.update(adata.uns[method.name]["seconds"])

    started = time.perf_counter()
    # n_clusters as given: tl.cluster defaults it itself (K-means 8 without labels, Leiden its resolution)
    scores = scatac.tl.cluster(adata, use_rep=f"X_{method.name}", labels_key=labels_key,
                               n_clusters=settings["n_clusters"],
                               method=settings["cluster"], resolution=settings["resolution"], seed=settings["seed"])
    seconds["cluster_and_score_s"] = time.perf_counter() - started
    if not settings["no_umap"]:
        started = time.perf_counter()
        info(f"{method.name}: UMAP of {adata.n_obs} cells ...")
        scatac.tl.umap(adata, use_rep=f"X_{method.name}", seed=settings["seed"])
        seconds["umap_s"] = time.perf_counter() - started

    info(f"{method.name}: writing results ...")
    with files.staged_folder(outdir) as stage:
        export.write_results(stage, adata, method.name, labels_key=labels_key, model=model,
                             settings={**settings, "device": str(device)}, seconds=seconds)
        export.write_figures(stage, adata, method.name, labels_key=labels_key)
    print(f"{method.name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items()))
    print(f"{method.name}: results in {outdir}")
    return scores


def _open_store(settings: dict):
    """The run's store (written or found by run_method) as a backed AnnData, and the line saying what was loaded.
    The store holds the filtered cells and peaks; nothing of the matrix is read here but its row pointers."""
    path = settings["store"]
    adata = io.store.read_backed(path)
    with io.open_store(path) as counts:
        nnz = counts.nnz
    return adata, f"loaded {adata.n_obs} cells x {adata.n_vars} peaks ({nnz} non-zeros) from {path} (on disk, streamed)"


def main(method):
    """A script's entry point: run `method` from the command line, errors as one line."""
    return cli.run_cli(run_method, method)
