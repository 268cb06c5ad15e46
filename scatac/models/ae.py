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
    """The plain autoencoder: n_peaks -> hidden_dims -> latent_dim -> reversed hidden_dims -> n_peaks logits.

    LayerNorm and ReLU between layers; the first layer reads sparse batches (`scatac.nn.PeakLinear`), the last gives
    the Bernoulli likelihood of which peaks are open (`scatac.nn.PeakOutput`), each cell's depth added to the logits.
    The arguments have no defaults here: the method's card (`scatac.methods`) holds them.

    Parameters
    ----------
    n_peaks : int
        The input and output size.
    latent_dim : int
        The code's dimensions.
    hidden_dims : sequence of int
        Hidden layer sizes of the encoder, input side first (the decoder mirrors them).
    input_dropout : float
        Dropout on the input peaks (denoising).
    dropout : float
        Dropout after each hidden layer.

    Attributes
    ----------
    config : dict
        The keyword arguments that rebuild it (model.pt stores them).
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
        x : scatac.batches.SparseRows or torch.Tensor
            (batch, n_peaks) transformed accessibility.

        Returns
        -------
        torch.Tensor
            (batch, latent_dim).
        """
        return self.encoder(x)

    def embed(self, batch):
        """The features of a batch: the code of the clean input, without input dropout.

        Parameters
        ----------
        batch : scatac.batches.Batch
            A mini-batch on the model's device.

        Returns
        -------
        torch.Tensor
            (batch, latent_dim).
        """
        return self.encode(batch.x)

    def loss(self, batch, epoch=None):
        """The loss terms on a batch, with input dropout: what the training loop minimizes ("loss") and records.

        Parameters
        ----------
        batch : scatac.batches.Batch
            A mini-batch on the model's device.
        epoch : int or None
            The training epoch (unused here; the VAE's KL weight reads it).

        Returns
        -------
        dict of torch.Tensor
            Scalar terms; "loss" is minimized.
        """
        # denoising: the code of the input with peaks dropped must rebuild all of the cell's open peaks;
        # the decoder's output layer adds each cell's depth offset (nn.PeakOutput)
        latent = self.encode(self.input_dropout(batch.x))
        return {"loss": reconstruction_nll(self.decoder, latent, batch)}


def fit(data: TrainData, latent_dim: int, network: Mapping, config: TrainConfig, trainer: Trainer, seed: int) -> Fitted:
    """Train `AutoEncoder(**network)` on `data` as `config` says.

    Parameters
    ----------
    data : scatac.batches.TrainData
        The cells, transformed (or a store's, `scatac.streamed.StoredData`).
    latent_dim : int
        The code's dimensions.
    network : mapping
        The model class's keyword arguments, resolved by the method's card (`scatac.methods.Method.resolve`).
    config : scatac.train.TrainConfig
        What the training loop is asked.
    trainer : scatac.train.Trainer
        Where and how to train.
    seed : int
        The batches' order (the weights were seeded by the caller).

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
