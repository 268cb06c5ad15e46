"""bench/refine.py: two ideas measured on top of one autoencoder fit a seed (issue 20), on the labelled data sets.

    python bench/refine.py [--datasets hemato600,schep600,hemato4k,cerebellum801] [--method AE] [--seeds 5]
                           [--dec-epochs 30] [--out table.tsv] [--<option> value ...]

For each data set and seed the method is fitted once with its defaults (or the given --options), as compare.py
fits it, and its code is scored as it is (`base`). Then, from that fit:

- `DEC`: Deep Embedded Clustering (Xie et al. 2016) on the encoder. k centres start at K-means on the code (k = the
  label types); each cell's soft assignment q_ik is a Student-t kernel (one degree of freedom) around them; the
  encoder and the centres are trained to lower KL(P || Q), P the target distribution q_ik^2 / f_k renormalized per
  cell (f_k the soft cluster sizes), recomputed over all cells at each pass; the decoder is not used.
- `IDEC`: the same with the reconstruction loss kept (Guo et al. 2017), so that the code keeps the data's structure:
  loss = reconstruction / (its value before refinement) + gamma * KL(P || Q), gamma 0.1 as IDEC.
  Both stop when fewer than 0.1% of cells change their hard assignment between passes, or after --dec-epochs.
- `ensemble<n>`: the codes of n seeds' fits, each standardized, side by side, clustered as one representation:
  the mean over every choice of n of the seeds run (n = 3), and all of them (n = --seeds). It costs n fits.

Every representation is scored as compare.py scores one: K-means and Leiden (k = the label types) in the clustering
space, ARI. Prints one table (dataset, variant, ARI mean and sd over seeds, seconds a seed) and writes it with --out.
"""
import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scatac import cli, files, methods  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def soft_assignment(code, centres):
    """DEC's q: (cells, k), a Student-t kernel with one degree of freedom, normalized per cell."""
    import torch

    q = 1.0 / (1.0 + torch.cdist(code, centres).pow(2))
    return q / q.sum(dim=1, keepdim=True)


def target_distribution(q):
    """DEC's P: q squared over the soft cluster sizes, renormalized per cell (sharpens confident assignments and
    keeps large clusters from taking over)."""
    weight = q.pow(2) / q.sum(dim=0)
    return weight / weight.sum(dim=1, keepdim=True)


def refine(model, data, n_clusters: int, *, gamma, epochs: int, batch_size: int, lr: float, seed: int, device):
    """DEC (gamma None: the clustering loss alone) or IDEC (reconstruction kept) on a copy of `model`.
    Returns the refined code (cells, latent_dim) as a numpy array and the passes run."""
    import numpy as np
    import torch
    from sklearn.cluster import KMeans

    model = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    def codes():
        model.eval()
        with torch.no_grad():
            return torch.cat([model.embed(data.batch(rows, device))
                              for rows in np.array_split(np.arange(data.n_cells), max(1, data.n_cells // 1024))])

    start = codes()
    kmeans = KMeans(n_clusters, n_init=10, random_state=seed).fit(start.cpu().numpy())
    centres = torch.nn.Parameter(torch.tensor(kmeans.cluster_centers_, dtype=torch.float32, device=device))
    optimizer = torch.optim.Adam(list(model.parameters()) + [centres], lr=lr)
    reconstruction_start = None
    if gamma is not None:
        model.eval()
        with torch.no_grad():
            rows = np.arange(min(data.n_cells, 1024))
            reconstruction_start = float(model.loss(data.batch(rows, device))["loss"])
    assigned = kmeans.labels_
    passes = 0
    for passes in range(1, epochs + 1):
        with torch.no_grad():
            target = target_distribution(soft_assignment(codes(), centres))
        model.train()
        for rows in np.array_split(rng.permutation(data.n_cells), max(1, data.n_cells // batch_size)):
            batch = data.batch(np.sort(rows), device)
            q = soft_assignment(model.embed(batch), centres)
            p = target[torch.from_numpy(np.sort(rows)).to(device)]
            clustering = torch.sum(p * (torch.log(p + 1e-12) - torch.log(q + 1e-12)), dim=1).mean()
            loss = clustering if gamma is None else (model.loss(batch)["loss"] / reconstruction_start
                                                     + gamma * clustering)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            now = soft_assignment(codes(), centres).argmax(dim=1).cpu().numpy()
        changed = float(np.mean(now != assigned))
        assigned = now
        if changed < 0.001:
            break
    return codes().cpu().numpy(), passes


def scores(adata, code, labels_key="label", seed=0):
    """K-means and Leiden ARI of one representation (k = the label types), as compare.py scores it."""
    import scatac

    adata.obsm["X_bench"] = code
    kmeans = scatac.tl.cluster(adata, "X_bench", labels_key=labels_key, seed=seed, key_added="bench_kmeans")
    leiden = scatac.tl.cluster(adata, "X_bench", labels_key=labels_key, seed=seed, method="leiden",
                               key_added="bench_leiden")
    return kmeans["ARI"], leiden["ARI"]


def summary(values):
    import numpy as np

    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="hemato600,schep600,hemato4k,cerebellum801")
    parser.add_argument("--method", default="AE", choices=[m.name for m in methods.NEURAL])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--dec-epochs", type=int, default=30, help="most passes of DEC / IDEC refinement")
    parser.add_argument("--dec-lr", type=float, default=1e-4)
    parser.add_argument("--gamma", type=float, default=0.1, help="IDEC's weight of the clustering loss")
    parser.add_argument("--variants", default="DEC,IDEC,ensemble")
    parser.add_argument("--out", default=None)
    parser.add_argument("--quiet", action="store_true")
    args, extra = parser.parse_known_args(argv)

    import numpy as np

    import scatac
    from scatac import tl
    from scatac.batches import TrainData
    from scatac.runtime import select_device

    method = methods.ALL[args.method]
    options = cli.option_overrides(method, extra)
    fit = getattr(tl, {"AE": "ae", "SparseAE": "sparse_ae", "StackedAE": "stacked_ae", "VAE": "vae"}[method.name])
    variants = args.variants.split(",")
    device = select_device("auto")
    rows = []
    for name in filter(None, args.datasets.split(",")):
        folder = Path(name) if Path(name).exists() else SHARED / name
        adata = scatac.read(folder, labels=folder / "labels.txt")
        scatac.pp.filter(adata)
        n_types = adata.obs["label"].nunique()
        found = {}
        codes = []
        for seed in range(args.seeds):
            started = time.perf_counter()
            model = fit(adata, 10, seed=seed, progress=not args.quiet, **options)
            fit_s = time.perf_counter() - started
            code = np.asarray(adata.obsm[f"X_{method.name}"])
            codes.append(code)
            found.setdefault("base", []).append((*scores(adata, code, seed=seed), fit_s))
            run = method.resolve(options)
            data = TrainData.from_counts(tl.counts_of(adata), run.options["transform"])
            batch_size = adata.uns[method.name]["batch_size"] or 64
            for variant, gamma in (("DEC", None), ("IDEC", args.gamma)):
                if variant not in variants:
                    continue
                started = time.perf_counter()
                refined, passes = refine(model, data, n_types, gamma=gamma, epochs=args.dec_epochs,
                                         batch_size=batch_size, lr=args.dec_lr, seed=seed, device=device)
                refine_s = time.perf_counter() - started
                found.setdefault(variant, []).append((*scores(adata, refined, seed=seed), fit_s + refine_s))
                print(f"{name} seed {seed} {variant}: passes {passes}, K-means ARI {found[variant][-1][0]:.3f} "
                      f"(base {found['base'][-1][0]:.3f}), {refine_s:.1f} s", flush=True)
        if "ensemble" in variants and args.seeds >= 3:
            def stacked(chosen):
                return np.hstack([(codes[i] - codes[i].mean(0)) / (codes[i].std(0) + 1e-8) for i in chosen])

            fit_s = np.mean([r[2] for r in found["base"]])
            for n in sorted({3, args.seeds}):
                found[f"ensemble{n}"] = [(*scores(adata, stacked(chosen)), n * fit_s)
                                         for chosen in itertools.combinations(range(args.seeds), n)]
        for variant, values in found.items():
            kmeans_mean, kmeans_sd = summary([v[0] for v in values])
            leiden_mean, leiden_sd = summary([v[1] for v in values])
            rows.append({"dataset": folder.name, "method": method.name, "variant": variant, "n": len(values),
                         "ARI_mean": kmeans_mean, "ARI_sd": kmeans_sd, "ARI_leiden_mean": leiden_mean,
                         "ARI_leiden_sd": leiden_sd, "seconds": float(np.mean([v[2] for v in values]))})
        print(rows[-len(found):], flush=True)
    columns = ["dataset", "method", "variant", "n", "ARI_mean", "ARI_sd", "ARI_leiden_mean", "ARI_leiden_sd", "seconds"]
    table = [[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))
    if args.out:
        files.write_table(args.out, columns, table)
    return rows


if __name__ == "__main__":
    cli.run_cli(main)
