"""Each option's rule, declared once: type, range or allowed values, default, help.

The method scripts' argparse, compare.py, the notebook's parameter check and the Python API all read
these declarations, so an option means the same thing, and is refused with the same message, in
every door: `rank: must be an integer >= 1, got 0` (the command line names the flag instead).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Iterable, Mapping

import numpy as np

from .errors import fail

TRANSFORMS = ("binary", "tfidf", "idf", "log", "maxabs")
FACTORIZATION_TRANSFORMS = ("counts",) + TRANSFORMS  # "counts": the filtered counts as they are
DEVICES = ("auto", "cpu", "cuda", "mps")
_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("True or False", "True or False")}


@dataclasses.dataclass(frozen=True)
class Param:
    """One option's rule, declared once: its type, range or allowed values, default and help.

    The method scripts' argparse, compare.py, the notebook's parameter check and the Python API all read these
    declarations, so an option means the same thing, and is refused with the same message, in every door. `check`
    returns the value as the code uses it, or raises InputError saying what is allowed.

    Parameters
    ----------
    name : str
        The option's name (the flag is `--name` with dashes).
    kind : type
        int, float, str or bool.
    default : object
        The default (None: "work it out", said in the help).
    help : str
        The --help text.
    low, high : float or None
        Bounds, inclusive unless `low_open` / `high_open`.
    low_open, high_open : bool
        Exclude the bound.
    choices : tuple of str
        The allowed strings.
    none_ok : bool
        Admit None.
    many : bool
        Take a non-empty list.
    pattern : str or None
        A regular expression a string must match whole; `pattern_help` says it in words.
    pattern_help : str
    named : tuple of str
        Words allowed besides the numbers (batch_size 'auto').
    group : str
        The --help section the option appears under.
    """

    name: str
    kind: type
    default: object = None
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    none_ok: bool = False
    many: bool = False
    pattern: str | None = None
    pattern_help: str = ""
    named: tuple = ()
    group: str = "model"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def but(self, **changes) -> "Param":
        """The same rule with another default or help: `INPUT_DROPOUT.but(default=0.5)`."""
        return dataclasses.replace(self, **changes)

    def describe(self, command_line: bool = False) -> str:
        """The rule in words; on the command line without 'or None' (no one types None there)."""
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.pattern:
            text = self.pattern_help
        else:
            one, several = _NOUNS[self.kind]
            text = f"a non-empty list of {several}" if self.many else one
            if self.low is not None and self.high is not None:
                text += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
            elif self.low is not None:
                text += f" {'>' if self.low_open else '>='} {self.low:g}"
            elif self.high is not None:
                text += f" {'<' if self.high_open else '<='} {self.high:g}"
        text += "".join(f" or {word!r}" for word in self.named)
        return text + (" or None" if self.none_ok and not command_line else "")

    def check(self, value, label: str | None = None):
        """`value` as the code uses it (a tuple when `many`); InputError(label or name, ...) when it breaks the rule."""
        if (value is None and self.none_ok) or (isinstance(value, str) and value in self.named):
            return value
        if self.many:
            values = tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else ()
            if values and all(self._fits(v) for v in values):
                return tuple(self._as_kind(v) for v in values)
        elif self._fits(value):
            return self._as_kind(value)
        label = label or self.name
        fail(label, f"must be {self.describe(command_line=label.startswith('--'))}, got {value!r}")

    def _fits(self, value) -> bool:
        if self.kind is bool:
            return isinstance(value, (bool, np.bool_))
        if isinstance(value, (bool, np.bool_)):
            return False
        if self.kind is str:
            return (isinstance(value, str) and (not self.choices or value in self.choices)
                    and (not self.pattern or re.fullmatch(self.pattern, value) is not None))
        numbers = (int, np.integer) if self.kind is int else (int, float, np.integer, np.floating)
        if not isinstance(value, numbers) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def _as_kind(self, value):
        # a float option keeps an int as it came: a filter threshold of 1 (cells) is not 1.0 (all cells)
        if isinstance(value, np.generic):
            value = value.item()
        return int(value) if self.kind is int else value

    def parse(self, text: str):
        """A command-line word as the option's kind (its named words as they are): argparse's `type`."""
        return text if text in self.named else self.kind(text)

    def help_text(self) -> str:
        if "default" in self.help or self.default is None:
            return self.help
        shown = (" ".join(map(str, self.default)) if self.many
                 else f"{self.default:g}" if self.kind is float and not isinstance(self.default, str) else self.default)
        return f"{self.help} (default {shown})"


class Options:
    """An ordered set of Params: the options one method (or one step) takes.

    `options + other` joins two sets (the left one's Param wins a name both have); `resolve` checks given values and
    fills in the defaults.

    Parameters
    ----------
    *params : Param
        The options, in --help order.
    """

    def __init__(self, *params: Param):
        self.params = {p.name: p for p in params}

    def __iter__(self):
        return iter(self.params.values())

    def __contains__(self, name) -> bool:
        return name in self.params

    def __getitem__(self, name) -> Param:
        return self.params[name]

    def __add__(self, other: "Options") -> "Options":
        return Options(*self, *(p for p in other if p.name not in self))

    def defaults(self) -> dict:
        return {p.name: p.default for p in self}

    def resolve(self, given: Mapping, where: str = "options", label: Callable[[Param], str] | None = None) -> dict:
        """Every option's checked value, defaults filled in; an unknown name is an InputError naming `where`."""
        unknown = [name for name in given if name not in self.params]
        if unknown:
            fail(where, f"unknown option {unknown[0]!r}; allowed: {', '.join(self.params)}")
        return {p.name: p.check(given[p.name], label(p) if label else p.name) if p.name in given else p.default
                for p in self}

    def add_arguments(self, parser, groups: dict, skip: Iterable[str] = ()):
        """Add each option as a --flag to the argparse group named by its `group` (made on first use)."""
        for p in self:
            if p.name in skip:
                continue
            if p.group not in groups:
                groups[p.group] = parser.add_argument_group(p.group)
            target = groups[p.group]
            if p.kind is bool:
                target.add_argument(p.flag, action="store_true", help=p.help)
            else:
                target.add_argument(p.flag, type=p.parse, default=p.default, help=p.help_text(),
                                    nargs="+" if p.many else None, choices=p.choices or None)


def check_latent_size(latent_dim: int, n_cells: int, n_peaks: int, name: str = "latent_dim", source="data",
                      kept: bool = True):
    """Refuse a latent size that is not below the peaks and at most the cells (a rank-k factorization needs both).

    Parameters
    ----------
    latent_dim : int
        The latent size (or rank).
    n_cells, n_peaks : int
        Those kept by the filter, or (`kept` False) those a file's header announces, before anything is read.
    name : str
        What the message calls the size.
    source : str
        What the error names.
    kept : bool
        Whether the counts are after the filter.

    Raises
    ------
    scatac.InputError
        The size is too large.
    """
    which = "kept" if kept else "in the file"
    if latent_dim >= n_peaks:
        fail(source, f"{name} {latent_dim} must be smaller than the number of peaks {which} ({n_peaks})")
    if latent_dim > n_cells:
        fail(source, f"{name} {latent_dim} must not exceed the number of cells {which} ({n_cells})")


# --------------------------------------------------------------------------------------------------
# The options shared by several methods. A method takes one with its own default by `.but(default=...)`.
# --------------------------------------------------------------------------------------------------
LATENT_DIM = Param("latent_dim", int, 10, "number of latent features per cell", low=1)

LABEL_KEY = Param("label_key", str, None, "obs column holding cell-type labels (for .h5ad input)",
                  none_ok=True, group="data")
LAYER = Param("layer", str, None, "AnnData layer holding the counts, instead of X (.h5ad/.h5mu input; e.g. counts)",
              none_ok=True, group="data")
MODALITY = Param("modality", str, None, "the MuData modality to read (.h5mu input; default atac)", none_ok=True,
                 group="data")
USE_SELECTED = Param("use_selected", bool, False, "keep only the peaks of var['selected'] (an .h5ad from SnapATAC2's "
                                                 "select_features)", group="data")
PEAKS = Param("peaks", str, None, "fragment-file input: a BED file of the peaks to count in", none_ok=True,
              group="fragment files")
TILE_SIZE = Param("tile_size", int, None, "fragment-file input: count in fixed-width bins of this many bases instead "
                                          "(SnapATAC2's add_tile_matrix uses 500)", low=1, none_ok=True,
                  group="fragment files")
BARCODES = Param("barcodes", str, None, "fragment-file input: a file of the cell barcodes to keep (default: those "
                                        "with at least --min-fragments)", none_ok=True, group="fragment files")
MIN_FRAGMENTS = Param("min_fragments", int, 200, "fragment-file input: a barcode is a cell from this many fragments "
                                                 "(chrM not counted; SnapATAC2's default 200)", low=1,
                      group="fragment files")
COUNTING = Param("counting", str, "paired-insertion", "fragment-file input: paired-insertion (SnapATAC2's default: a "
                                                      "fragment with both ends in a peak counts 1), insertion (each "
                                                      "end counts 1), fragment (each overlapping fragment counts 1)",
                 choices=("paired-insertion", "insertion", "fragment"), group="fragment files")
MIN_CELLS_PER_PEAK = Param("min_cells_per_peak", float, 3, low=0, group="data",
                           help="keep peaks open in at least this many cells (a fraction of cells when < 1; default 3, as SCALE)")
MAX_CELLS_PER_PEAK = Param("max_cells_per_peak", float, 1.0, low=0, group="data",
                           help="keep peaks open in at most this many cells (a fraction when <= 1.0; default 1.0 keeps all)")
MIN_PEAKS_PER_CELL = Param("min_peaks_per_cell", float, 10, low=0, group="data",
                           help="keep cells with at least this many open peaks (default 10)")
N_TOP_PEAKS = Param("n_top_peaks", int, None, low=1, none_ok=True, group="data",
                    help="after filtering, keep only the N peaks open in the most cells (SCALE's n_feature, SnapATAC2's "
                         "select_features; default: keep all)")
TRANSFORM = Param("transform", str, "tfidf", choices=TRANSFORMS, group="data",
                  help="encoder input: binary, tfidf (Signac's log TF-IDF), idf (binary x log(cells / cells opening the "
                       "peak), SnapATAC2's weighting), both with rows L2-normalized, log (log1p counts), maxabs (per-peak "
                       "MaxAbsScaler, the original suite's)")
FACTORIZATION_TRANSFORM = TRANSFORM.but(choices=FACTORIZATION_TRANSFORMS, default="idf",
                                        help="input of the factorization: counts as they are, or a transform")

N_CLUSTERS = Param("n_clusters", int, None, "clusters to find: K of K-means, or the count Leiden's resolution is "
                                            "bisected to (default: the number of label types; without labels K-means "
                                            "takes 8 and Leiden its --resolution)",
                   low=1, none_ok=True, group="clustering and run")
CLUSTER = Param("cluster", str, "kmeans", "kmeans (default), leiden: Leiden on the cells' 15-nearest-neighbour graph "
                                         "(scanpy's neighbors and leiden), or spectral: K-means on that graph's "
                                         "leading eigenvectors", choices=("kmeans", "leiden", "spectral"),
                group="clustering and run")
RESOLUTION = Param("resolution", float, None, "Leiden's resolution (default: bisected to --n-clusters or the number "
                                              "of label types; without either 1.0, scanpy's default)",
                   low=0, low_open=True, none_ok=True, group="clustering and run")
SEED = Param("seed", int, 0, "random seed; the same seed on CPU gives the same feature.txt (default 0)",
             low=0, group="clustering and run")
DEVICE = Param("device", str, "auto", "default: cuda, then mps, then cpu", choices=DEVICES, group="clustering and run")
NO_UMAP = Param("no_umap", bool, False, "skip the UMAP (umap.txt, umap.png)", group="clustering and run")
THREADS = Param("threads", int, None, "CPU threads for torch (default: torch's choice)", low=1, none_ok=True,
                group="clustering and run")
N_INIT = Param("n_init", int, 10, "K-means restarts", low=1, group="clustering and run")

EPOCHS = Param("epochs", int, 60, "passes over the data", low=1, group="training")
BATCH_SIZE = Param("batch_size", int, "auto", "cells per mini-batch; auto (default): 64, and with the sampled decoder "
                                              "an eighth of the cells (a power of two, 64 to 1024)", low=1,
                   named=("auto",), group="training")
LR = Param("lr", float, 1e-3, "Adam learning rate", low=0, low_open=True, group="training")

HIDDEN_DIMS = Param("hidden_dims", int, (512, 128), "hidden layer sizes of the encoder (the decoder mirrors them)",
                    low=1, many=True)
INPUT_DROPOUT = Param("input_dropout", float, 0.8, "dropout on the input peaks", low=0, high=1, high_open=True)
DROPOUT = Param("dropout", float, 0.1, "dropout after each hidden layer", low=0, high=1, high_open=True)
WEIGHT_DECAY = Param("weight_decay", float, 0.0, "Adam weight decay", low=0)
DECODER = Param("decoder", str, "auto", "full: every peak's logit in every step; sampled: the open peaks exactly and an "
                                        "importance sample of the others (unbiased; costs what the open peaks cost); auto "
                                        "(default): sampled from 2,000 cells on where it computes under half "
                                        "the logits, else full", choices=("auto", "full", "sampled"), group="training")
NEGATIVES = Param("negatives", str, "2x", "peaks drawn per batch for the sampled decoder: a count (2000) or a ratio to "
                                         "a cell's mean open peaks (default 2x)", pattern=r"[1-9][0-9]*|[0-9]*\.?[0-9]+x",
                  pattern_help="a count like '2000' or a ratio like '4x'", group="training")
NEIGHBOR_WEIGHT = Param("neighbor_weight", float, 0.1,
                        "weight of the neighbour term: each batch pairs cells with one of their nearest cells under "
                        "SnapATAC2's geometry (cosine on the IDF-weighted peaks, latent_dim SVD components) and their "
                        "codes are pulled together relative to random pairs, in proportion to the reconstruction "
                        "loss; 0 turns it off (default 0.1)", low=0, group="training")
NEIGHBOR_AFTER = Param("neighbor_after", int, 0,
                       "epochs trained on the reconstruction alone before the neighbour term is turned on; a run of no "
                       "more epochs trains without it (default 0: from the first step)", low=0, group="training")
EARLY_STOPPING = Param("early_stopping", bool, False, "hold out --validation-fraction of the cells and stop when their "
                                                     "loss has not improved for --patience epochs (the epochs become "
                                                     "a maximum); the held-out cells still get features",
                       group="training")
PATIENCE = Param("patience", int, 10, "epochs without improvement of the held-out loss before --early-stopping stops "
                                      "(default 10)", low=1, group="training")
VALIDATION_FRACTION = Param("validation_fraction", float, 0.1, "cells held out from training for --early-stopping "
                                                               "(default 0.1; the loss is taken on at most 2,048 of "
                                                               "them)", low=0, low_open=True, high=0.5,
                            group="training")

STORE = Param("store", str, None, "write the filtered input into an on-disk store at this path (an .h5ad file; its "
                                   "folder must exist) and train from it streamed, never holding the matrix in "
                                   "memory; a store already there is reused when it was made from the same input, "
                                   "labels and filter, and refused otherwise", none_ok=True, group="input")

# What every run of a method script takes besides the method's own options: the data and the run.
FILTER = Options(MIN_CELLS_PER_PEAK, MAX_CELLS_PER_PEAK, MIN_PEAKS_PER_CELL, N_TOP_PEAKS)
READ = Options(LABEL_KEY, LAYER, MODALITY, USE_SELECTED, PEAKS, TILE_SIZE, BARCODES, MIN_FRAGMENTS, COUNTING)
RUN = READ + FILTER + Options(STORE, N_CLUSTERS, CLUSTER, RESOLUTION, SEED, DEVICE, NO_UMAP, THREADS)


__all__ = ["Param", "Options", "check_latent_size"]
