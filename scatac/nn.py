"""The layers every autoencoder shares, and their losses: layers and losses only.

PeakLinear reads a sparse mini-batch (batches.SparseRows) directly, PeakDropout drops only its
stored values, mlp stacks layers. PeakOutput, a decoder's last layer, gives the Bernoulli
likelihood of which peaks are open either from every peak's logit (full) or, with a PeakSampler,
at what the open peaks cost (sampled); neighbor_ratio is the neighbour term. Which decoder a run
uses, and how many peaks it samples, is run policy: scatac.train (decoder_for, configure_decoder).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batches import SparseRows


class PeakLinear(nn.Module):
    """The first layer of an encoder, n_peaks -> out_features, reading a sparse batch directly.

    The weight is (in_features, out_features), the transpose of nn.Linear's, so that a batch of SparseRows is one
    embedding_bag (a weighted sum of the weight rows of the open peaks): forward and weight-gradient cost scale with the
    non-zeros, not with batch x n_peaks. A dense (batch, in_features) tensor is accepted too (x @ weight + bias).

    Parameters
    ----------
    in_features : int
        The peaks.
    out_features : int
        The layer's width.
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
        """The layer's output for a batch.

        Parameters
        ----------
        x : scatac.batches.SparseRows or torch.Tensor
            (batch, in_features).

        Returns
        -------
        torch.Tensor
            (batch, out_features).
        """
        if isinstance(x, SparseRows):
            return F.embedding_bag(x.indices, self.weight, x.offsets, mode="sum", per_sample_weights=x.values) + self.bias
        return torch.addmm(self.bias, x, self.weight)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, sparse input"


class PeakDropout(nn.Dropout):
    """Dropout on the input peaks.

    On SparseRows only the stored values are dropped (dropping a zero changes nothing), each kept one scaled by
    1 / (1 - p) as nn.Dropout does; a dense tensor gets nn.Dropout.

    Parameters
    ----------
    p : float
        The share of values dropped in training.
    """

    def forward(self, x):
        """The batch with dropout applied (in training mode).

        Parameters
        ----------
        x : scatac.batches.SparseRows or torch.Tensor
            (batch, n_peaks).

        Returns
        -------
        scatac.batches.SparseRows or torch.Tensor
            The same kind, the same pattern.
        """
        if not isinstance(x, SparseRows):
            return super().forward(x)
        if not self.training or self.p == 0:
            return x
        keep = torch.rand_like(x.values) >= self.p
        return x.with_values(x.values * keep / (1 - self.p))


def mlp(sizes, dropout=0.0, final_activation=False, peak_input=False, peak_output=False):
    """Linear layers with LayerNorm and ReLU between them (none after the last unless asked).

    Parameters
    ----------
    sizes : sequence of int
        The layers' sizes, input first: len(sizes) - 1 layers.
    dropout : float
        Dropout after each hidden layer.
    final_activation : bool
        LayerNorm and ReLU after the last layer too.
    peak_input : bool
        The first layer reads peaks (`PeakLinear`: sparse batches welcome).
    peak_output : bool
        The last layer gives peak logits (`PeakOutput`: the full or the sampled likelihood).

    Returns
    -------
    torch.nn.Sequential
    """
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if peak_input and i == 0:
            layers.append(PeakLinear(n_in, n_out))
        elif peak_output and i == len(sizes) - 2:
            layers.append(PeakOutput(n_in, n_out))
        else:
            layers.append(nn.Linear(n_in, n_out))
        last = i == len(sizes) - 2
        if not last or final_activation:
            layers.extend([nn.LayerNorm(n_out), nn.ReLU()])
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def bernoulli_nll(logits, batch):
    """-log p(which peaks are open | logits), summed over peaks and averaged over the batch's cells.

    The decoders add each cell's depth offset to `logits` before this, so that the code does not have to spend itself
    on sequencing depth.

    Parameters
    ----------
    logits : torch.Tensor
        (batch, n_peaks), depth offset included.
    batch : scatac.batches.Batch
        The batch, whose `target` is the open peaks.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    return F.binary_cross_entropy_with_logits(logits, batch.target, reduction="sum") / len(batch.rows)


class PeakOutput(nn.Linear):
    """A decoder's last layer: hidden (batch, in_features) -> one logit per peak (batch, n_peaks).

    `nll` is the reconstruction term of the loss: with `sampler` None, from every peak's logit (`bernoulli_nll`); with a
    `PeakSampler`, estimated without a (batch, n_peaks) tensor. `scatac.train.configure_decoder` sets the sampler.

    Parameters
    ----------
    in_features : int
        The last hidden layer's width.
    out_features : int
        The peaks.

    Attributes
    ----------
    sampler : PeakSampler or None
        The sampled decoder's estimate, or None for the full loss.
    """

    sampler = None

    def nll(self, hidden, batch):
        """-log p(the batch's open peaks | hidden), per cell: the reconstruction term.

        Parameters
        ----------
        hidden : torch.Tensor
            (batch, in_features), the last hidden layer's output.
        batch : scatac.batches.Batch
            The batch (its open peaks and depth offsets).

        Returns
        -------
        torch.Tensor
            A scalar.
        """
        if self.sampler is None:
            return bernoulli_nll(self(hidden) + batch.depth, batch)
        return self.sampler.nll(self, hidden, batch)


def neighbor_ratio(code, neighbor_code):
    """The neighbour term: how far cells are from their reference neighbours in the code, relative to random pairs.

    The mean squared distance between each cell's code and its neighbour's, over the mean squared distance between
    random pairs (i, j) of the batch. The ratio is blind to the code's scale, which the reconstruction does not fix (an
    invertible linear map of the code is undone by the decoder's first layer): a plain distance would shrink the code
    instead of arranging it. It pulls the code towards the reference's neighbourhoods; the reconstruction keeps what
    the reference does not see.

    Parameters
    ----------
    code : torch.Tensor
        (batch, latent_dim), the batch's features (`embed`: without input dropout, whose noise would swamp the
        distances).
    neighbor_code : torch.Tensor
        (batch, latent_dim), the same for one reference neighbour of each cell (`scatac.pp.reference_neighbors`: near
        under SnapATAC2's geometry).

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    near = (code - neighbor_code).pow(2).sum(dim=1).mean()
    shuffled = torch.randperm(code.shape[0], device=code.device)
    spread = (code - code[shuffled]).pow(2).sum(dim=1).mean()
    return near / (spread + 1e-8)


class StepLoss(nn.Module):
    """The loss one training step minimizes: the model's own terms, plus the neighbour term where the step pairs cells.

    A module, so that DistributedDataParallel can wrap it: DDP averages, over the processes, the gradients of what
    `forward` computes. `forward(batch, pairs, epoch)` returns (loss, terms); pairs is None or (anchors, partners), two
    Batches of equal length, each anchor cell beside one of its reference neighbours. The term adds
    neighbor_weight x ratio x loss, the last factor held fixed: weighed against the reconstruction's own size, which
    differs a hundredfold between data sets, one weight holds on all. The partners' code takes no gradient (a fixed
    target, as BYOL's: its backward pass would cost a third more).

    Parameters
    ----------
    model : torch.nn.Module
        The autoencoder (`embed(batch)` gives its features).
    loss_fn : callable
        `loss_fn(model, batch, epoch)`, a dict of scalar tensors with the "loss" to minimize.
    neighbor_weight : float
        The neighbour term's weight.
    """

    def __init__(self, model: nn.Module, loss_fn, neighbor_weight: float):
        super().__init__()
        self.model, self.loss_fn, self.neighbor_weight = model, loss_fn, neighbor_weight

    def forward(self, batch, pairs, epoch):
        """The loss of one step and its terms.

        Parameters
        ----------
        batch : scatac.batches.Batch
            The cells to train on.
        pairs : tuple of scatac.batches.Batch or None
            (anchors, partners) for the neighbour term, or None.
        epoch : int
            The training epoch.

        Returns
        -------
        loss : torch.Tensor
            The scalar minimized.
        terms : dict of torch.Tensor
            The model's terms and, with pairs, "neighbor" (the ratio).
        """
        terms = self.loss_fn(self.model, batch, epoch)
        loss = terms["loss"]
        if pairs is not None:
            anchors, partners = pairs
            with torch.no_grad():
                partner_code = self.model.embed(partners)
            terms = {**terms, "neighbor": neighbor_ratio(self.model.embed(anchors), partner_code)}
            loss = loss + self.neighbor_weight * loss.detach() * terms["neighbor"]
        return loss, terms


def reconstruction_nll(decoder: nn.Sequential, code, batch):
    """-log p(the batch's open peaks | code), per cell and averaged.

    Parameters
    ----------
    decoder : torch.nn.Sequential
        A decoder ending in a `PeakOutput`.
    code : torch.Tensor
        (batch, latent_dim).
    batch : scatac.batches.Batch
        The batch (its open peaks and depth offsets).

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    return decoder[-1].nll(decoder[:-1](code), batch)


class PeakSampler:
    """The Bernoulli NLL of a batch at what its open peaks cost, with unbiased gradients: the sampled decoder.

    For a cell with logits z_p (depth offset included), -log p = sum_p softplus(z_p) - sum_{p open} z_p.

    - The open peaks' sum is exact: the output layer's rows of the open peaks summed (embedding_bag, the kernel of the
      encoder's first layer) and dotted with the hidden state.
    - The sum over every peak, for the loss's value and for the gradient of everything upstream of the output layer, is
      estimated by importance sampling: `m` peaks s_1..s_m drawn with replacement from q, one draw for the whole batch
      so that its logits are one (batch, m) product: sum_p softplus(z_p) ~ (1/m) sum_j softplus(z_{s_j}) / q(s_j),
      unbiased for any q > 0. q mixes the peaks' open frequency (frequently open peaks carry most of the sum) with a
      uniform share.
    - The output layer's own gradient from that sum is taken over every peak for `output_cells` cells of the batch drawn
      at random (weighted batch / output_cells, so unbiased too): every row moves at every step. Rows that got their
      gradient only in the steps that drew them learned far slower under Adam, whose per-row scale saw the spikes (the
      documentation's tried-and-dropped page has the numbers).

    Parameters
    ----------
    open_fraction : numpy.ndarray
        (n_peaks,) the share of cells in which each peak is open.
    m : int
        Peaks drawn per batch.
    uniform_share : float
        The uniform part of q.
    output_cells : int
        Cells of a batch whose every peak gives the output layer's gradient.
    device : str or torch.device
        Where the draws are made.
    """

    def __init__(self, open_fraction: np.ndarray, m: int, uniform_share: float = 0.5, output_cells: int = 8,
                 device="cpu"):
        frequency = np.asarray(open_fraction, dtype=np.float64)
        frequency = frequency / frequency.sum() if frequency.sum() > 0 else np.full(len(frequency), 1 / len(frequency))
        q = (1 - uniform_share) * frequency + uniform_share / len(frequency)
        self.q = torch.as_tensor(q / q.sum(), dtype=torch.float32, device=device)
        self.m = int(m)
        self.output_cells = int(output_cells)

    def nll(self, output: PeakOutput, hidden, batch):
        """The estimated NLL of a batch, per cell.

        Parameters
        ----------
        output : PeakOutput
            The decoder's last layer.
        hidden : torch.Tensor
            (batch, in_features), its input.
        batch : scatac.batches.Batch
            The batch (its open peaks and depth offsets).

        Returns
        -------
        torch.Tensor
            A scalar whose value and gradients are unbiased for the full loss's.
        """
        weight, bias = output.weight, output.bias
        # a peak drawn twice is two columns: the same sum as one column weighted by its count, with no
        # data-dependent shape (a host sync on CUDA)
        draws = torch.multinomial(self.q, self.m, replacement=True)
        importance = 1 / (self.m * self.q[draws])
        logits = torch.addmm(bias.detach()[draws], hidden, weight.detach()[draws].t()) + batch.depth
        every_peak = (F.softplus(logits) * importance).sum(dim=1)

        cells = torch.randperm(len(hidden), device=hidden.device)[: self.output_cells]
        cell_logits = torch.addmm(bias, hidden.detach()[cells], weight.t()) + batch.depth[cells]
        for_output_layer = F.softplus(cell_logits).sum() / len(cells)

        opened = batch.open
        n_open = torch.diff(opened.offsets, append=opened.offsets.new_tensor([opened.indices.numel()]))
        cell_of = torch.repeat_interleave(torch.arange(len(n_open), device=n_open.device), n_open,
                                          output_size=opened.indices.numel())
        weight_sum = F.embedding_bag(opened.indices, weight, opened.offsets, mode="sum")
        bias_sum = torch.zeros(len(n_open), device=hidden.device).index_add(0, cell_of, bias[opened.indices])
        open_logits = (weight_sum * hidden).sum(dim=1) + bias_sum + n_open * batch.depth.squeeze(1)
        # the output layer's term adds its gradient and nothing to the value
        return (every_peak - open_logits).mean() + for_output_layer - for_output_layer.detach()


def sampled_outputs(model: nn.Module) -> list:
    """The model's PeakOutput layers that estimate their loss from a sample of peaks.

    Parameters
    ----------
    model : torch.nn.Module
        A model.

    Returns
    -------
    list of PeakOutput
        Empty for the full decoder.
    """
    return [m for m in model.modules() if isinstance(m, PeakOutput) and m.sampler is not None]


@contextlib.contextmanager
def full_decoder(model: nn.Module):
    """Within the block, the model's losses are computed from every peak's logit (to report the full loss).

    A context manager: the samplers of `model`'s PeakOutput layers are set aside and put back on exit.

    Parameters
    ----------
    model : torch.nn.Module
        A model.

    Yields
    ------
    torch.nn.Module
        The model.
    """
    layers = sampled_outputs(model)
    samplers = [layer.sampler for layer in layers]
    for layer in layers:
        layer.sampler = None
    try:
        yield model
    finally:
        for layer, sampler in zip(layers, samplers):
            layer.sampler = sampler


__all__ = ["PeakLinear", "PeakDropout", "PeakOutput", "PeakSampler", "StepLoss", "mlp", "bernoulli_nll",
           "reconstruction_nll", "neighbor_ratio", "sampled_outputs", "full_decoder"]
