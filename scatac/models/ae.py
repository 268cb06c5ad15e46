"""The plain autoencoder (AE.py), trained as a denoising one.

The encoder reads the transformed peaks of a cell (TF-IDF by default) through input dropout; the
decoder predicts which peaks are open (Bernoulli). Each cell's depth (the logit of its fraction of
open peaks) is added to the output logits, so the latent code does not spend itself on depth.
"""
from __future__ import annotations

from typing import Mapping

from torch import nn

from ..batches import TrainData
from ..nn import PeakDropout, mlp, reconstruction_nll
from ..train import Fitted, TrainConfig, Trainer, configure_decoder


class AutoEncoder(nn.Module):
    """n_peaks -> hidden_dims -> latent_dim -> reversed hidden_dims -> n_peaks logits.

    Input: a batch of (batch, n_peaks) transformed accessibility; output logits (batch, n_peaks).
    `config` holds the keyword arguments that rebuild it (model.pt stores them). The network's arguments have no
    defaults here: methods.AE's card holds them (hidden_dims, input_dropout: dropout on the input peaks,
    dropout: after each hidden layer).
    """

    def __init__(self, n_peaks: int, latent_dim: int, *, hidden_dims, input_dropout: float, dropout: float):
        super().__init__()
        self.config = dict(n_peaks=n_peaks, latent_dim=latent_dim, hidden_dims=tuple(hidden_dims),
                           input_dropout=input_dropout, dropout=dropout)
        self.input_dropout = PeakDropout(input_dropout)
        self.encoder = mlp([n_peaks, *hidden_dims, latent_dim], dropout=dropout, peak_input=True)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), n_peaks], dropout=dropout, peak_output=True)

    def encode(self, x):
        """The code of a (batch, n_peaks) input: (batch, latent_dim)."""
        return self.encoder(x)

    def embed(self, batch):
        """The features: the code of the clean input (no input dropout)."""
        return self.encode(batch.x)

    def loss(self, batch, epoch=None):
        # denoising: the code of the input with peaks dropped must rebuild all of the cell's open peaks;
        # the decoder's output layer adds each cell's depth offset (nn.PeakOutput)
        latent = self.encode(self.input_dropout(batch.x))
        return {"loss": reconstruction_nll(self.decoder, latent, batch)}


def fit(data: TrainData, latent_dim: int, network: Mapping, config: TrainConfig, trainer: Trainer, seed: int) -> Fitted:
    """Train an AutoEncoder(**network) on `data` as `config` says; features are the encoder's output without dropout."""
    model = AutoEncoder(data.n_peaks, latent_dim, **network).to(trainer.device)
    configure_decoder(model, data, config, trainer.device)
    history = trainer.train(model, data, config, seed)
    return Fitted(trainer.encode(model, data), model, history)
