"""The layers every autoencoder shares, and their reconstruction loss.

PeakLinear reads a sparse mini-batch (batches.SparseRows) directly, PeakDropout drops only its
stored values, mlp stacks layers; bernoulli_nll is the likelihood of which peaks are open.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .batches import SparseRows


class PeakLinear(nn.Module):
    """The first layer of an encoder: n_peaks -> out_features, reading a sparse batch directly.

    weight: (in_features, out_features), the transpose of nn.Linear's, so that a batch of
    SparseRows is one embedding_bag (a weighted sum of the weight rows of the open peaks): forward
    and weight-gradient cost scale with the non-zeros, not with batch x n_peaks.
    A dense (batch, in_features) tensor is accepted too (x @ weight + bias).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        bound = 1 / math.sqrt(in_features)  # nn.Linear's default initialisation
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        if isinstance(x, SparseRows):
            return F.embedding_bag(x.indices, self.weight, x.offsets, mode="sum", per_sample_weights=x.values) + self.bias
        return torch.addmm(self.bias, x, self.weight)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, sparse input"


class PeakDropout(nn.Dropout):
    """Dropout on the input peaks. On SparseRows only the stored values are dropped (dropping a zero
    changes nothing), each kept one scaled by 1 / (1 - p) as nn.Dropout does."""

    def forward(self, x):
        if not isinstance(x, SparseRows):
            return super().forward(x)
        if not self.training or self.p == 0:
            return x
        keep = torch.rand_like(x.values) >= self.p
        return x.with_values(x.values * keep / (1 - self.p))


def mlp(sizes, dropout=0.0, final_activation=False, peak_input=False):
    """Linear layers with LayerNorm and ReLU between them (none after the last unless asked).

    peak_input: the first layer reads peaks (PeakLinear: sparse batches welcome).
    """
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(PeakLinear(n_in, n_out) if peak_input and i == 0 else nn.Linear(n_in, n_out))
        last = i == len(sizes) - 2
        if not last or final_activation:
            layers.extend([nn.LayerNorm(n_out), nn.ReLU()])
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def bernoulli_nll(logits, batch):
    """-log p(which peaks are open | logits), summed over peaks and averaged over the batch's cells.

    The decoders add each cell's depth offset to `logits` before this, so the code does not have to
    spend itself on sequencing depth.
    """
    return F.binary_cross_entropy_with_logits(logits, batch.target, reduction="sum") / len(batch.rows)
