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
from . import shared_doc


@shared_doc
class AutoEncoder(nn.Module):
    """The plain autoencoder: n_peaks -> hidden_dims -> latent_dim -> reversed hidden_dims -> n_peaks logits.

    LayerNorm and ReLU between layers; the first layer reads sparse batches (`scatac.nn.PeakLinear`), the last gives
    the Bernoulli likelihood of which peaks are open (`scatac.nn.PeakOutput`), each cell's depth added to the logits.
    The arguments have no defaults here: the method's card (`scatac.methods`) holds them.

    Parameters
    ----------
    {network_parameters}

    Attributes
    ----------
    {config_attribute}
    """

    def __init__(self, n_peaks: int, latent_dim: int, *, hidden_dims, input_dropout: float, dropout: float):
        super().__init__()
        self.config = dict(n_peaks=n_peaks, latent_dim=latent_dim, hidden_dims=tuple(hidden_dims),
                           input_dropout=input_dropout, dropout=dropout)
        self.input_dropout = PeakDropout(input_dropout)
        self.encoder = mlp([n_peaks, *hidden_dims, latent_dim], dropout=dropout, peak_input=True)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), n_peaks], dropout=dropout, peak_output=True)

    def encode(self, x):
        """The code of an input.

        Parameters
        ----------
        {input_parameter}

        Returns
        -------
        torch.Tensor
            (batch, latent_dim).
        """
        return self.encoder(x)

    def embed(self, batch):
        """The features of a batch: the code of the clean input, without input dropout.

        {embed_sections}
        """
        return self.encode(batch.x)

    def loss(self, batch, epoch=None):
        """The loss terms on a batch, with input dropout: what the training loop minimizes ("loss") and records.

        {loss_sections}
        """
        # denoising: the code of the input with peaks dropped must rebuild all of the cell's open peaks;
        # the decoder's output layer adds each cell's depth offset (nn.PeakOutput)
        latent = self.encode(self.input_dropout(batch.x))
        return {"loss": reconstruction_nll(self.decoder, latent, batch)}


@shared_doc
def fit(data: TrainData, latent_dim: int, network: Mapping, config: TrainConfig, trainer: Trainer, seed: int) -> Fitted:
    """Train `AutoEncoder(**network)` on `data` as `config` says.

    Parameters
    ----------
    {fit_parameters}

    Returns
    -------
    scatac.train.Fitted
        features: (n_cells, latent_dim) float32, the encoder's output without dropout; model: the trained AutoEncoder;
        history: one record per epoch.
    """
    model = AutoEncoder(data.n_peaks, latent_dim, **network).to(trainer.device)
    configure_decoder(model, data, config, trainer.device)
    history = trainer.train(model, data, config, seed)
    return Fitted(trainer.encode(model, data), model, history)


__all__ = ["AutoEncoder", "fit"]
