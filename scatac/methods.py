"""The suite's methods, one card each: name, summary, and the options it takes with its defaults.

A card imports nothing heavy, so a script's --help and its option errors answer at once; the model code (torch) is
imported only when scatac.tl fits the method. The epochs defaults are the recommended ones, chosen by measurement on
the labelled data sets of the documentation's benchmarks page.

Each option has one default, the card's: an autoencoder's card resolves a run's options (Method.resolve) into
frozen RunOptions, the keyword arguments of its model class (which keeps no defaults of its own), the training
loop's TrainConfig and its fit's own schedule, and nothing below the card defaults them again.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from .errors import fail
from .factorization import LSNMF_OPTIONS, NMF_OPTIONS
from .params import (BATCH_SIZE, DECODER, DROPOUT, EARLY_STOPPING, EPOCHS, HIDDEN_DIMS, INPUT_DROPOUT, LR, NEGATIVES,
                     NEIGHBOR_AFTER, NEIGHBOR_WEIGHT, PATIENCE, TRANSFORM, VALIDATION_FRACTION, WEIGHT_DECAY, Options, Param)
from .train import TrainConfig


@dataclass(frozen=True)
class RunOptions:
    """One run of an autoencoder's options: checked, each defaulted by its card, split by who takes them.

    All read-only.

    Attributes
    ----------
    options : mapping
        Every option by name (what the run records as its params).
    network : mapping
        The keyword arguments of the method's model class (`Method.network`).
    training : scatac.train.TrainConfig
        The training loop's config.
    schedule : mapping
        The keyword arguments of the method's fit beyond those (`Method.schedule`: StackedAE's pretrain_epochs, the
        VAE's kl_warmup).
    """

    options: Mapping
    network: Mapping
    training: TrainConfig
    schedule: Mapping


@dataclass(frozen=True)
class Method:
    """One method's card: its name, summary, and the options it takes with their one default each.

    `scatac.methods.AE`, `SPARSE_AE`, `STACKED_AE`, `VAE`, `NMF` and `LSNMF` are the cards (`ALL` by name). A card
    imports nothing heavy, so that a script's --help and its option errors answer at once.

    Attributes
    ----------
    name : str
        The script's name, the features' column prefix and the key of its results (`obsm["X_<name>"]`).
    summary : str
        The script's description.
    options : scatac.params.Options
        Every option the method takes.
    epoch_options : tuple of str
        The options the command line takes as leading positional arguments, in order (the passes over the data: one,
        or StackedAE's pretraining and fine-tuning).
    sized_by_clusters : tuple of str
        Options whose None means "as many as the clusters of the run" (the VAE's mixture), which a script fills in
        from --n-clusters or the labels.
    kind : {'neural', 'factorization'}
        Trained by `scatac.train`, or a factorization.
    network : tuple of str
        The options that are the model class's keyword arguments.
    schedule : tuple of str
        The options its fit takes by keyword besides the TrainConfig.
    training_epochs : str
        The option that is the TrainConfig's epochs. The rest are TrainConfig's fields, and the input transform.
    """

    name: str
    summary: str
    options: Options
    epoch_options: tuple = ()
    sized_by_clusters: tuple = ()
    kind: str = "neural"
    network: tuple = ()
    schedule: tuple = ()
    training_epochs: str = "epochs"

    def resolve(self, given: Mapping, where: str | None = None) -> RunOptions:
        """An autoencoder's options for one run, as its model class, the training loop and its fit take them.

        Parameters
        ----------
        given : mapping
            Option name -> value, each checked by its Param; the others take the card's defaults.
        where : str or None
            What an unknown option's InputError names (default: the method's name).

        Returns
        -------
        RunOptions
            Frozen: every option, the network's arguments, the TrainConfig and the fit's schedule.

        Raises
        ------
        scatac.InputError
            An unknown option, or a value that breaks its rule.
        TypeError
            The method is a factorization (its options are `options.resolve`'s).
        """
        if self.kind != "neural":
            raise TypeError(f"{self.name} is not trained by scatac.train: its options are {self.name}.options.resolve's")
        options = self.options.resolve(given, where=where or self.name)

        def taken(names):
            return MappingProxyType({name: options[name] for name in names})

        return RunOptions(MappingProxyType(options), taken(self.network),
                          TrainConfig.from_options(options, epochs=options[self.training_epochs]), taken(self.schedule))


NETWORK = ("hidden_dims", "input_dropout", "dropout")  # every autoencoder's network arguments (_network's)


def _network(hidden_dims, input_dropout, input_dropout_help=None, hidden_help=None) -> Options:
    """The options every autoencoder has, with its own defaults: NETWORK and Adam's weight decay."""
    return Options(
        HIDDEN_DIMS.but(default=tuple(hidden_dims), **({"help": hidden_help} if hidden_help else {})),
        INPUT_DROPOUT.but(default=input_dropout, **({"help": input_dropout_help} if input_dropout_help else {})),
        DROPOUT, WEIGHT_DECAY,
    )


def _training(neighbor_weight: float = NEIGHBOR_WEIGHT.default,
              neighbor_after: int = NEIGHBOR_AFTER.default) -> Options:
    """The training options every autoencoder has; the neighbour term's weight and start are the card's own
    (measured per method: docs/benchmarks.md, "The neighbour term")."""
    return Options(BATCH_SIZE, LR, DECODER, NEGATIVES,
                   NEIGHBOR_WEIGHT.but(default=neighbor_weight, help=NEIGHBOR_WEIGHT.help.replace(
                       "(default 0.1)", f"(default {neighbor_weight:g})")),
                   NEIGHBOR_AFTER.but(default=neighbor_after, help=NEIGHBOR_AFTER.help.replace(
                       "(default 0: from the first step)", f"(default {neighbor_after})") if neighbor_after else
                       NEIGHBOR_AFTER.help),
                   TRANSFORM, EARLY_STOPPING, PATIENCE, VALIDATION_FRACTION)


TRAINING = _training()

AE = Method(
    "AE", "Plain autoencoder: features of scATAC-seq cells, UMAP, K-means clusters and scores.",
    Options(EPOCHS.but(help="passes over the data (the original suite counted mini-batches under this name)"))
    + _network((512, 128), 0.8,
               "dropout on the input peaks, a denoising autoencoder (default 0.8, chosen by measurement: see the "
               "benchmarks page)")
    + TRAINING,
    epoch_options=("epochs",),
    network=NETWORK,
)

# rho near the original's 0.03 left about half a unit of latent_dim=10 on per cell: near one-hot codes that merged
# similar types; rho 0.2 scored higher with the penalty still active (docs/benchmarks.md, "Defaults of the methods").
SPARSE_AE = Method(
    "SparseAE", "Sparse autoencoder (KL sparsity penalty on a sigmoid code): features of scATAC-seq cells, UMAP, "
                "K-means clusters and scores.",
    Options(EPOCHS.but(default=20))
    + _network((256,), 0.5)
    + Options(
        Param("sparsity_target", float, 0.2, "rho: the mean activation each code unit is pushed towards (default 0.2)",
              low=0, high=1, low_open=True, high_open=True),
        Param("sparsity_weight", float, 3.0, "beta: weight of the KL sparsity penalty; 0 turns it off (default 3)", low=0),
    )
    # the neighbour term from the first step broke a set at 20 epochs; turned on for the second half, it helped
    # every set (docs/benchmarks.md, "The neighbour term, turned on late")
    + _training(neighbor_after=10),
    epoch_options=("epochs",),
    network=NETWORK + ("sparsity_target", "sparsity_weight"),
)

STACKED_AE = Method(
    "StackedAE", "Stacked autoencoder (greedy layer-wise pretraining, then end-to-end fine-tuning): "
                 "features of scATAC-seq cells, UMAP, K-means clusters and scores.",
    Options(EPOCHS.but(name="pretrain_epochs", default=5, help="passes over the data for each layer's pretraining"),
            EPOCHS.but(name="finetune_epochs", default=20, help="passes over the data for fine-tuning the whole stack"))
    + _network((512, 128), 0.8,
               "dropout on the input peaks, denoising as AE (default 0.8, chosen by measurement: see the benchmarks "
               "page)",
               "hidden layer sizes of the stack, input side first; the last layer is latent_dim (default 512 128)")
    # as SparseAE's: the term for the second half of fine-tuning (pretraining never has it)
    + _training(neighbor_after=10),
    epoch_options=("pretrain_epochs", "finetune_epochs"),
    network=NETWORK,
    schedule=("pretrain_epochs",),
    training_epochs="finetune_epochs",
)

VAE = Method(
    "VAE", "Variational autoencoder (Gaussian-mixture prior as SCALE, or standard normal): "
           "features of scATAC-seq cells, UMAP, K-means clusters and scores.",
    Options(
        EPOCHS.but(default=30),
        Param("prior", str, "gmm", "gmm: learnable Gaussian mixture, SCALE's model; normal: N(0, I) (default gmm)",
              choices=("gmm", "normal")),
        Param("n_components", int, None, "mixture components of the gmm prior (default: the number of clusters of the "
                                         "run: --n-clusters, else the label types, else 8)", low=1, none_ok=True),
        Param("kl_warmup", int, 10, "epochs over which the KL weight rises from 0 to 1; the gmm prior is fit to the codes "
                                    "when it ends (default 10)", low=0),
    )
    # One hidden layer and moderate input dropout: with 512 128 the posterior collapsed on some seeds
    # (docs/benchmarks.md, "Defaults of the methods")
    + _network((256,), 0.5)
    + TRAINING,
    epoch_options=("epochs",),
    sized_by_clusters=("n_components",),
    network=NETWORK + ("prior", "n_components"),
    schedule=("kl_warmup",),
)

NMF = Method("NMF", "Non-negative matrix factorization (scikit-learn) of the cells x peaks matrix.", NMF_OPTIONS,
             kind="factorization")
LSNMF = Method("LSNMF", "Alternating non-negative least squares by projected gradient (Lin 2007), with a graph term "
                        "over the cells' neighbours.", LSNMF_OPTIONS, kind="factorization")

NEURAL = (AE, SPARSE_AE, STACKED_AE, VAE)
FACTORIZATIONS = (NMF, LSNMF)
ALL = {m.name: m for m in NEURAL + FACTORIZATIONS}


def parse_names(methods, allowed, where: str = "methods") -> list:
    """Method names as given ('NMF,LSNMF', 'nmf lsnmf' or a list), matched without case, order kept, duplicates dropped.

    Parameters
    ----------
    methods : str or sequence of str
        The names.
    allowed : sequence of str
        The names allowed, as they are spelled.
    where : str
        What an error names.

    Returns
    -------
    list of str
        The names as `allowed` spells them.

    Raises
    ------
    scatac.InputError
        No name, or an unknown one.
    """
    items = methods.replace(",", " ").split() if isinstance(methods, str) else list(methods or [])
    by_lower = {name.lower(): name for name in allowed}
    if not items:
        fail(where, f"no method given; allowed: {', '.join(allowed)}")
    unknown = [item for item in items if str(item).strip().lower() not in by_lower]
    if unknown:
        fail(where, f"unknown method {unknown[0]!r}; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(by_lower[str(item).strip().lower()] for item in items))


__all__ = ["Method", "RunOptions", "parse_names"]
