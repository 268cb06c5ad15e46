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


def mlp(sizes, dropout=0.0, final_activation=False, peak_input=False, peak_output=False):
    """Linear layers with LayerNorm and ReLU between them (none after the last unless asked).

    peak_input: the first layer reads peaks (PeakLinear: sparse batches welcome).
    peak_output: the last layer gives peak logits (PeakOutput: the full or the sampled likelihood).
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

    The decoders add each cell's depth offset to `logits` before this, so the code does not have to
    spend itself on sequencing depth.
    """
    return F.binary_cross_entropy_with_logits(logits, batch.target, reduction="sum") / len(batch.rows)


class PeakOutput(nn.Linear):
    """A decoder's last layer: hidden (batch, in_features) -> one logit per peak (batch, n_peaks).

    nll() is the reconstruction term of the loss: with `sampler` None, from every peak's logit
    (bernoulli_nll); with a PeakSampler, estimated without a (batch, n_peaks) tensor.
    """

    sampler = None

    def nll(self, hidden, batch):
        if self.sampler is None:
            return bernoulli_nll(self(hidden) + batch.depth, batch)
        return self.sampler.nll(self, hidden, batch)


def neighbor_ratio(code, neighbor_code):
    """The neighbour term: how far cells are from their reference neighbours in the code, relative to random pairs.

    code: (batch, latent_dim), the batch's features (`embed`: without input dropout, whose noise would swamp
    the distances); neighbor_code: the same for one reference neighbour of each cell (pp.reference_neighbors:
    near under SnapATAC2's geometry). Returns mean |code - neighbor_code|^2 / mean |code_i - code_j|^2 over
    random pairs (i, j) of the batch, a scalar tensor. The ratio is blind to the code's scale, which the
    reconstruction does not fix (an invertible linear map of the code is undone by the decoder's first
    layer): a plain distance would shrink the code instead of arranging it. It pulls the code towards the
    reference's neighbourhoods; the reconstruction keeps what the reference does not see.
    """
    near = (code - neighbor_code).pow(2).sum(dim=1).mean()
    shuffled = torch.randperm(code.shape[0], device=code.device)
    spread = (code - code[shuffled]).pow(2).sum(dim=1).mean()
    return near / (spread + 1e-8)


class StepLoss(nn.Module):
    """The loss one training step minimizes: the model's own terms, plus the neighbour term where the step pairs
    cells with reference neighbours. A module, so that DistributedDataParallel can wrap it: DDP averages, over the
    processes, the gradients of what forward() computes.

    model: the autoencoder (`embed(batch)` gives its features); loss_fn: `loss_fn(model, batch, epoch)` -> dict of
    scalar tensors with the "loss" to minimize; neighbor_weight: the neighbour term's weight.
    forward(batch, pairs, epoch) -> (loss, terms): pairs is None or (anchors, partners), two Batches of equal length,
    each anchor cell beside one of its reference neighbours. The term adds neighbor_weight * ratio * loss, the last
    factor held fixed: weighed against the reconstruction's own size, which differs a hundredfold between data
    sets, one weight holds on all. The partners' code takes no gradient (a fixed target, as BYOL's: its backward
    pass would cost a third more).
    """

    def __init__(self, model: nn.Module, loss_fn, neighbor_weight: float):
        super().__init__()
        self.model, self.loss_fn, self.neighbor_weight = model, loss_fn, neighbor_weight

    def forward(self, batch, pairs, epoch):
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
    """-log p(the batch's open peaks | code), per cell and averaged: `decoder` ends in a PeakOutput."""
    return decoder[-1].nll(decoder[:-1](code), batch)


class PeakSampler:
    """The Bernoulli NLL of a batch at what its open peaks cost, with unbiased gradients.

    For a cell with logits z_p (depth offset included), -log p = sum_p softplus(z_p) - sum_{p open} z_p.

    - The open peaks' sum is exact: the output layer's rows of the open peaks summed (embedding_bag,
      the kernel of the encoder's first layer) and dotted with the hidden state.
    - The sum over every peak, for the loss's value and for the gradient of everything upstream of
      the output layer, is estimated by importance sampling: `m` peaks s_1..s_m drawn with
      replacement from q, one draw for the whole batch so that its logits are one (batch, m) product:
      sum_p softplus(z_p) ~ (1/m) sum_j softplus(z_{s_j}) / q(s_j), unbiased for any q > 0. q mixes
      the peaks' open frequency (frequently open peaks carry most of the sum) with a uniform share.
    - The output layer's own gradient from that sum is taken over every peak for `output_cells`
      cells of the batch drawn at random (weighted batch / output_cells, so unbiased too): every
      row moves at every step. Rows that got their gradient only in the steps that drew them
      learned far slower under Adam, whose per-row scale saw the spikes (demo, 30 epochs: ARI 0.22
      against 0.85 for the full decoder; 0.92 with this split).
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
    """The model's PeakOutput layers that estimate their loss from a sample of peaks."""
    return [m for m in model.modules() if isinstance(m, PeakOutput) and m.sampler is not None]


@contextlib.contextmanager
def full_decoder(model: nn.Module):
    """Within the block, the model's losses are computed from every peak's logit (to report the full loss)."""
    layers = sampled_outputs(model)
    samplers = [layer.sampler for layer in layers]
    for layer in layers:
        layer.sampler = None
    try:
        yield model
    finally:
        for layer, sampler in zip(layers, samplers):
            layer.sampler = sampler
