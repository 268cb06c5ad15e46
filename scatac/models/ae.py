"""The plain autoencoder (AE.py), trained as a denoising one.

The encoder reads the transformed peaks of a cell (TF-IDF by default) through input dropout; the
decoder predicts which peaks are open (Bernoulli). Each cell's depth (the logit of its fraction of
open peaks) is added to the output logits, so the latent code does not spend itself on depth.
"""
from __future__ import annotations

from torch import nn

from ..batches import TrainData
from ..nn import PeakDropout, configure_decoder, mlp, reconstruction_nll
from ..train import Fitted, Trainer, early_stopping


class AutoEncoder(nn.Module):
    """n_peaks -> hidden_dims -> latent_dim -> reversed hidden_dims -> n_peaks logits.

    Input: a batch of (batch, n_peaks) transformed accessibility; output logits (batch, n_peaks).
    `config` holds the keyword arguments that rebuild it (model.pt stores them).
    """

    def __init__(self, n_peaks: int, latent_dim: int, hidden_dims=(512, 128), input_dropout: float = 0.8, dropout: float = 0.1):
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


def fit(data: TrainData, latent_dim: int, options: dict, trainer: Trainer, seed: int) -> Fitted:
    """Train an AutoEncoder on `data`; features are the encoder's output without dropout."""
    model = AutoEncoder(data.n_peaks, latent_dim, options["hidden_dims"], options["input_dropout"],
                        options["dropout"]).to(trainer.device)
    configure_decoder(model, data, options, trainer.device)
    history = trainer.train(model, data, options["epochs"], options["batch_size"], options["lr"], seed,
                            weight_decay=options["weight_decay"], neighbor_weight=options["neighbor_weight"],
                            **early_stopping(options))
    return Fitted(trainer.encode(model, data), model, history)
