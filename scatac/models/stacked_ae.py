"""The stacked autoencoder (StackedAE.py): pretrained greedily layer by layer, then fine-tuned end to end.

Layer 1 is first trained as a shallow autoencoder of the peaks (Bernoulli, with each cell's depth
added to the logits, as the AE); layer k > 1 is then trained as a shallow autoencoder of the codes
of layer k-1, the layers below held fixed (mean squared error). The pretrained encoders and
decoders are then stacked into one deep autoencoder, and every layer is fine-tuned together on
the peaks.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..batches import TrainData
from ..nn import PeakDropout, mlp, reconstruction_nll
from ..train import Fitted, TrainConfig, Trainer, configure_decoder
from . import shared_doc


@shared_doc
class StackedAutoEncoder(nn.Module):
    """The stacked autoencoder: n_peaks -> hidden_dims -> latent_dim -> reversed hidden_dims -> n_peaks, as a stack.

    `encoders[k]` maps sizes[k] -> sizes[k+1]; `decoders[k]` maps back sizes[k+1] -> sizes[k]. decoders[0] returns peak
    logits; the others return codes with the same activation as the encoder layer whose output they rebuild. Each
    layer is pretrained on its own (`pretrain`), then all together (`finetune`). The arguments have no defaults here:
    the method's card (`scatac.methods`) holds them.

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
        sizes = [n_peaks, *hidden_dims, latent_dim]
        self.n_layers = len(sizes) - 1
        self.input_dropout = PeakDropout(input_dropout)
        self.encoders = nn.ModuleList(
            mlp([sizes[k], sizes[k + 1]], dropout=dropout, final_activation=k < self.n_layers - 1, peak_input=k == 0)
            for k in range(self.n_layers)
        )
        self.decoders = nn.ModuleList(
            # no dropout on rebuilt codes: their pretraining compares them with the clean codes
            mlp([sizes[k + 1], sizes[k]], final_activation=k > 0, peak_output=k == 0) for k in range(self.n_layers)
        )

    def encode_to(self, x, depth: int):
        """The code of layer `depth` (0 is the input itself).

        Parameters
        ----------
        {input_parameter}
        depth : int
            The layer.

        Returns
        -------
        torch.Tensor
            (batch, sizes[depth]).
        """
        for encoder in self.encoders[:depth]:
            x = encoder(x)
        return x

    def decode_from(self, code, depth: int, to: int = 0):
        """The code of layer `to` rebuilt from that of layer `depth` (to 0: the peak logits, without the depth offset).

        Parameters
        ----------
        code : torch.Tensor
            (batch, sizes[depth]).
        depth : int
            The layer the code is of.
        to : int
            The layer to rebuild.

        Returns
        -------
        torch.Tensor
            (batch, sizes[to]).
        """
        for decoder in reversed(self.decoders[to:depth]):
            code = decoder(code)
        return code

    def embed(self, batch):
        """The features of a batch: the top code of the clean input, without input dropout.

        {embed_sections}
        """
        return self.encode_to(batch.x, self.n_layers)

    def reconstruction(self, batch):
        """The whole stack's reconstruction loss on a batch, with input dropout.

        Parameters
        ----------
        {batch_parameter}

        Returns
        -------
        torch.Tensor
            A scalar: -log p(the batch's open peaks), per cell.
        """
        latent = self.encode_to(self.input_dropout(batch.x), self.n_layers)
        return reconstruction_nll(self.decoders[0], self.decode_from(latent, self.n_layers, to=1), batch)

    def loss(self, batch, epoch=None):
        """The loss terms on a batch, with input dropout: what the training loop minimizes ("loss") and records.

        {loss_sections}
        """
        return {"loss": self.reconstruction(batch)}

    def layer_loss(self, layer: int, batch):
        """The shallow autoencoder of layer `layer` on the codes of the layer below, which stays fixed.

        Parameters
        ----------
        layer : int
            The layer (0-based): 0 rebuilds the peaks (Bernoulli), the others the codes below (summed squared error).
        {batch_parameter}

        Returns
        -------
        torch.Tensor
            A scalar, per cell.
        """
        if layer == 0:
            return reconstruction_nll(self.decoders[0], self.encoders[0](self.input_dropout(batch.x)), batch)
        below = self.encoders[:layer]
        below.eval()  # the codes being rebuilt are the lower layers' real outputs, without dropout noise
        with torch.no_grad():
            inputs = self.encode_to(batch.x, layer)
        rebuilt = self.decoders[layer](self.encoders[layer](inputs))
        return F.mse_loss(rebuilt, inputs, reduction="sum") / len(batch.rows)


def pretrain(model: StackedAutoEncoder, data: TrainData, config: TrainConfig, trainer: Trainer, seed: int) -> list:
    """Greedy layer-wise pretraining: each layer's own encoder and decoder, the layers below fixed.

    For `config.epochs` each (the run's pretrain_epochs), without the neighbour term and without early stopping (a few
    epochs by design). The phases are named pretrain_layer1 .. N.

    Parameters
    ----------
    model : StackedAutoEncoder
        The stack, trained in place.
    data : scatac.batches.TrainData
        The cells.
    config : scatac.train.TrainConfig
        The pretraining's config.
    trainer : scatac.train.Trainer
        Where and how to train.
    seed : int
        The batches' order.

    Returns
    -------
    list of dict
        One record per epoch of every layer.
    """
    config = replace(config, neighbor_weight=0.0, early_stopping=False)
    history = []
    for layer in range(model.n_layers):
        parameters = [*model.encoders[layer].parameters(), *model.decoders[layer].parameters()]
        history += trainer.train(
            model, data, config, seed + layer,
            loss_fn=lambda m, batch, epoch, layer=layer: {"loss": m.layer_loss(layer, batch)},
            parameters=parameters, phase=f"pretrain_layer{layer + 1}",
        )
    return history


def finetune(model: StackedAutoEncoder, data: TrainData, config: TrainConfig, trainer: Trainer, seed: int) -> list:
    """Every layer trained together on the peaks as `config` says, starting from the weights `model` holds.

    Early stopping, when on, watches this phase only.

    Parameters
    ----------
    model : StackedAutoEncoder
        The stack, trained in place.
    data : scatac.batches.TrainData
        The cells.
    config : scatac.train.TrainConfig
        The fine-tuning's config (its epochs: the run's finetune_epochs).
    trainer : scatac.train.Trainer
        Where and how to train.
    seed : int
        The batches' order.

    Returns
    -------
    list of dict
        One record per epoch (phase 'finetune').
    """
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return trainer.train(model, data, config, seed, phase="finetune")


@shared_doc
def fit(data: TrainData, latent_dim: int, network: Mapping, config: TrainConfig, trainer: Trainer, seed: int, *,
        pretrain_epochs: int) -> Fitted:
    """Pretrain layer by layer for `pretrain_epochs` each, then fine-tune the whole stack as `config` says.

    Parameters
    ----------
    {fit_parameters}
    pretrain_epochs : int
        Epochs of each layer's pretraining.

    Returns
    -------
    scatac.train.Fitted
        features: (n_cells, latent_dim) float32, the top code without dropout; model: the trained StackedAutoEncoder;
        history: one record per epoch of every phase.
    """
    model = StackedAutoEncoder(data.n_peaks, latent_dim, **network).to(trainer.device)
    configure_decoder(model, data, config, trainer.device)
    history = pretrain(model, data, replace(config, epochs=pretrain_epochs), trainer, seed)
    history += finetune(model, data, config, trainer, seed)
    return Fitted(trainer.encode(model, data), model, history)


__all__ = ["StackedAutoEncoder", "pretrain", "finetune", "fit"]
