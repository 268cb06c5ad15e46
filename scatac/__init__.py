"""scatac: features of single-cell ATAC-seq cells from four autoencoders and two matrix factorizations.

    import scatac
    adata = scatac.read("data/demo", labels="data/demo/labels.txt")   # AnnData of counts, cells x peaks
    scatac.pp.filter(adata)                                            # SCALE's cell and peak filter
    scatac.tl.ae(adata, latent_dim=10)                                 # obsm["X_AE"]
    scatac.tl.cluster(adata, use_rep="X_AE", labels_key="label")      # obs["cluster"], uns["cluster"]["scores"]

Modules follow the data: io (read), pp (filter, transforms), tl (methods, clustering, UMAP), pl
(figures), export (result files); below them batches, nn, train and models (the autoencoders),
factorization, evaluate, params (each option's rule), methods (each method's card), files,
runtime, errors. Importing scatac imports neither torch nor anndata nor matplotlib.
"""
from . import io, pl, pp, tl
from .errors import InputError, TrainingFailed
from .io import read

__version__ = "0.2.0"
__all__ = ["io", "pp", "tl", "pl", "read", "InputError", "TrainingFailed", "__version__"]
