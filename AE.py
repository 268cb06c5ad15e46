"""AE.py: a plain fully-connected autoencoder for scATAC-seq.

    python AE.py <epochs> <data> <outdir> <latent_dim> [labels] [--options]

The encoder reads the transformed peaks of a cell (TF-IDF by default) through input
dropout; the decoder predicts which peaks are open (Bernoulli, binary cross-entropy).
Each cell's depth (the logit of its fraction of open peaks) is added to the output
logits, so the latent code does not spend itself on sequencing depth.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

import common

METHOD = "AE"


class PeakLinear(nn.Module):
    """The first layer of an encoder: n_peaks -> out_features, reading a sparse batch directly.

    weight: (in_features, out_features), the transpose of nn.Linear's, so that a batch of
    common.SparseRows is one embedding_bag (a weighted sum of the weight rows of the open
    peaks): forward and weight-gradient cost scale with the non-zeros, not with batch x n_peaks.
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
        if isinstance(x, common.SparseRows):
            return F.embedding_bag(x.indices, self.weight, x.offsets, mode="sum", per_sample_weights=x.values) + self.bias
        return torch.addmm(self.bias, x, self.weight)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, sparse input"


class PeakDropout(nn.Dropout):
    """Dropout on the input peaks. On common.SparseRows only the stored values are dropped (dropping
    a zero changes nothing), each kept one scaled by 1 / (1 - p) as nn.Dropout does."""

    def forward(self, x):
        if not isinstance(x, common.SparseRows):
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


class AutoEncoder(nn.Module):
    """n_peaks -> hidden_dims -> latent_dim -> reversed hidden_dims -> n_peaks logits.

    Input x: (batch, n_peaks) transformed accessibility; output logits (batch, n_peaks).
    """

    def __init__(self, n_peaks: int, latent_dim: int, hidden_dims=(512, 128), input_dropout: float = 0.8, dropout: float = 0.1):
        super().__init__()
        self.input_dropout = PeakDropout(input_dropout)
        self.encoder = mlp([n_peaks, *hidden_dims, latent_dim], dropout=dropout, peak_input=True)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), n_peaks], dropout=dropout)

    def encode(self, x):
        return self.encoder(self.input_dropout(x))

    def decode(self, latent, depth):
        return self.decoder(latent) + depth

    def embed(self, batch):
        return self.encoder(batch.x)

    def loss(self, batch, epoch=None):
        latent = self.encode(batch.x)
        logits = self.decode(latent, batch.depth)
        reconstruction = F.binary_cross_entropy_with_logits(logits, batch.target, reduction="sum") / len(batch.rows)
        return {"loss": reconstruction}


def build_parser():
    parser = common.method_parser(
        METHOD,
        "Plain autoencoder: features of scATAC-seq cells, UMAP, K-means clusters and scores.",
        [("epochs", "passes over the data (the original suite counted mini-batches under this name)")],
    )
    group = parser.add_argument_group("model")
    common.add_network_arguments(group, hidden_dims=(512, 128), input_dropout=0.8,
                                 input_dropout_help="dropout on the input peaks, a denoising autoencoder (default 0.8: measured best, see README)")
    common.add_training_arguments(parser)
    common.add_data_arguments(parser)
    return parser


def validate(args):
    common.validate_network_args(args)


def fit(data: common.TrainData, args, device) -> common.FitResult:
    """Train an AutoEncoder on `data`; features are the encoder's output without dropout."""
    config = dict(n_peaks=data.n_peaks, latent_dim=args.latent_dim, hidden_dims=tuple(args.hidden_dims),
                  input_dropout=args.input_dropout, dropout=args.dropout)
    model = AutoEncoder(**config).to(device)
    history = common.train(model, data, args.epochs, args.batch_size, args.lr, device, args.seed,
                           weight_decay=args.weight_decay, phase="train")
    latent = common.encode(model, data, device)
    return common.FitResult(latent=latent, model=model, model_config=config, history=history)


def main(argv=None):
    args = build_parser().parse_args(argv)
    validate(args)
    return common.run_method(METHOD, fit, args, epochs_names=["epochs"])


if __name__ == "__main__":
    common.run_cli(main)
