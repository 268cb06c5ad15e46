"""The sparse autoencoder (SparseAE.py): a code kept sparse by Ng's KL sparsity penalty.

The same encoder, decoder and Bernoulli reconstruction as the AE, except that the code goes
through a sigmoid and the loss adds

    beta * sum_j KL(rho || rho_hat_j),  rho_hat_j = mean activation of unit j over the batch,

so each unit is pushed to be active in about a fraction rho of the cells: units become detectors
of groups of cells rather than dense mixtures.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..batches import TrainData
from ..nn import PeakDropout, mlp, reconstruction_nll
from ..train import Fitted, TrainConfig, Trainer, configure_decoder
from . import shared_doc


def kl_sparsity(mean_activation, target: float):
    """Ng's sparsity penalty: sum_j KL(Bernoulli(target) || Bernoulli(mean_activation_j)).

    Zero only when every unit averages `target`.

    Parameters
    ----------
    mean_activation : torch.Tensor
        (latent_dim,) each unit's mean activation over the batch, in (0, 1).
    target : float
        rho, the mean activation each unit is pushed towards.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    rho_hat = mean_activation.clamp(1e-6, 1 - 1e-6)
    return (target * torch.log(target / rho_hat) + (1 - target) * torch.log((1 - target) / (1 - rho_hat))).sum()


@shared_doc
class SparseAutoEncoder(nn.Module):
    """The sparse autoencoder: n_peaks -> hidden_dims -> latent_dim (a sigmoid code) -> reversed hidden_dims -> n_peaks.

    The loss adds beta x sum_j KL(rho || rho_hat_j) to the AE's reconstruction, rho_hat_j being unit j's mean activation
    over the batch. The arguments have no defaults here: the method's card (`scatac.methods`) holds them.

    Parameters
    ----------
    {network_parameters}
    sparsity_target : float
        rho, the mean activation each code unit is pushed towards.
    sparsity_weight : float
        beta, the penalty's weight (0 turns it off).

    Attributes
    ----------
    {config_attribute}
    """

    def __init__(self, n_peaks: int, latent_dim: int, *, hidden_dims, input_dropout: float, dropout: float,
                 sparsity_target: float, sparsity_weight: float):
        super().__init__()
        self.config = dict(n_peaks=n_peaks, latent_dim=latent_dim, hidden_dims=tuple(hidden_dims),
                           input_dropout=input_dropout, dropout=dropout, sparsity_target=sparsity_target,
                           sparsity_weight=sparsity_weight)
        self.sparsity_target = sparsity_target
        self.sparsity_weight = sparsity_weight
        self.input_dropout = PeakDropout(input_dropout)
        self.encoder = mlp([n_peaks, *hidden_dims, latent_dim], dropout=dropout, peak_input=True)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), n_peaks], dropout=dropout, peak_output=True)

    def code(self, x):
        """The sigmoid code of an input.

        Parameters
        ----------
        {input_parameter}

        Returns
        -------
        torch.Tensor
            (batch, latent_dim), in (0, 1).
        """
        # A sigmoid makes each unit's batch mean an activation probability in (0, 1),
        # which is what the KL penalty compares with rho.
        return torch.sigmoid(self.encoder(x))

    def embed(self, batch):
        """The features of a batch: the logits of the clean input's code, without input dropout.

        The logits rank cells as the sigmoid code does, without its saturation.

        {embed_sections}
        """
        # The code's logits: the same ranking as the sigmoid code, without its saturation, which
        # squeezed apart cell types together (measured: docs/benchmarks.md, "Defaults of the methods").
        return self.encoder(batch.x)

    def loss(self, batch, epoch=None):
        """The loss terms on a batch, with input dropout: what the training loop minimizes ("loss") and records.

        Parameters
        ----------
        {loss_parameters}

        Returns
        -------
        dict of torch.Tensor
            Scalar terms: loss, reconstruction, sparsity_kl, mean_activation.
        """
        code = self.code(self.input_dropout(batch.x))
        reconstruction = reconstruction_nll(self.decoder, code, batch)
        mean_activation = code.mean(dim=0)
        sparsity = kl_sparsity(mean_activation, self.sparsity_target)
        return {
            "loss": reconstruction + self.sparsity_weight * sparsity,
            "reconstruction": reconstruction,
            "sparsity_kl": sparsity,
            "mean_activation": mean_activation.mean(),
        }


@shared_doc
def fit(data: TrainData, latent_dim: int, network: Mapping, config: TrainConfig, trainer: Trainer, seed: int) -> Fitted:
    """Train `SparseAutoEncoder(**network)` on `data` as `config` says.

    Parameters
    ----------
    {fit_parameters}

    Returns
    -------
    scatac.train.Fitted
        features: (n_cells, latent_dim) float32, the logits of the sparse code, without dropout; model: the trained
        SparseAutoEncoder; history: one record per epoch.
    """
    model = SparseAutoEncoder(data.n_peaks, latent_dim, **network).to(trainer.device)
    configure_decoder(model, data, config, trainer.device)
    history = trainer.train(model, data, config, seed)
    return Fitted(trainer.encode(model, data), model, history)


__all__ = ["SparseAutoEncoder", "kl_sparsity", "fit"]
