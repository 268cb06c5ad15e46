"""The variational autoencoder (VAE.py) with a Gaussian-mixture prior (SCALE's model) or a standard normal one.

The encoder gives each cell a Gaussian posterior q(z|x) = N(mean, diag var), sampled with the
reparameterization trick; the decoder predicts which peaks are open (Bernoulli, each cell's depth
added to the logits, as the AE). The loss is the reconstruction plus a KL term whose weight rises
from 0 to 1 over the first `kl_warmup` epochs (KLWarmup, a callback of the training loop):

  gmm (default, SCALE): p(z) = sum_c pi_c N(mu_c, diag var_c), with learnable pi, mu, var, fit to
      the posterior means by scikit-learn's GaussianMixture when the warm-up ends;
      KL = sum_c gamma_c KL(q(z|x) || N(mu_c, var_c)) + KL(gamma || pi), where gamma are the
      cell's responsibilities p(c | z) at a sampled z;
  normal: KL(q(z|x) || N(0, I)).

Features are the posterior means, so the same seed gives the same features.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..batches import TrainData
from ..nn import PeakDropout, mlp, reconstruction_nll
from ..train import Callback, Fitted, TrainConfig, Trainer, configure_decoder
from . import shared_doc

DEFAULT_COMPONENTS = 8  # mixture components when neither the caller nor the labels say how many


def kl_to_diagonal_gaussians(mean, logvar, prior_mean, prior_logvar):
    """KL(N(mean, exp(logvar)) || N(prior_mean_c, exp(prior_logvar_c))) for every component c, summed over dimensions.

    Parameters
    ----------
    mean, logvar : torch.Tensor
        (batch, latent_dim), the posteriors.
    prior_mean, prior_logvar : torch.Tensor
        (components, latent_dim), the prior's components.

    Returns
    -------
    torch.Tensor
        (batch, components).
    """
    mean, logvar = mean.unsqueeze(1), logvar.unsqueeze(1)
    return 0.5 * (prior_logvar - logvar + torch.exp(logvar - prior_logvar)
                  + (mean - prior_mean) ** 2 * torch.exp(-prior_logvar) - 1).sum(dim=2)


@shared_doc
class VariationalAutoEncoder(nn.Module):
    """The VAE: n_peaks -> hidden_dims -> (mean, logvar) of latent_dim -> reversed hidden_dims -> n_peaks logits.

    The prior is a Gaussian mixture with learnable weights, means and variances (SCALE's; fit to the posterior means
    when the KL warm-up ends, `fit_mixture`) or N(0, I). The arguments have no defaults here: the method's card
    (`scatac.methods`) holds them.

    Parameters
    ----------
    {network_parameters}
    prior : {'gmm', 'normal'}
        The prior.
    n_components : int
        The mixture's components.

    Attributes
    ----------
    {config_attribute}
    kl_weight : float
        The KL term's weight in the training loss: 1 (the ELBO) unless a KLWarmup is training the model.
    """

    def __init__(self, n_peaks: int, latent_dim: int, *, hidden_dims, input_dropout: float, dropout: float,
                 prior: str, n_components: int):
        super().__init__()
        self.config = dict(n_peaks=n_peaks, latent_dim=latent_dim, hidden_dims=tuple(hidden_dims),
                           input_dropout=input_dropout, dropout=dropout, prior=prior, n_components=n_components)
        self.prior = prior
        self.kl_weight = 1.0
        self.input_dropout = PeakDropout(input_dropout)
        self.encoder = mlp([n_peaks, *hidden_dims], dropout=dropout, final_activation=True, peak_input=True)
        self.to_mean = nn.Linear(hidden_dims[-1], latent_dim)
        self.to_logvar = nn.Linear(hidden_dims[-1], latent_dim)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), n_peaks], dropout=dropout, peak_output=True)
        if prior == "gmm":
            self.mixture_logits = nn.Parameter(torch.zeros(n_components))
            self.mixture_means = nn.Parameter(torch.zeros(n_components, latent_dim))
            self.mixture_logvars = nn.Parameter(torch.zeros(n_components, latent_dim))
        # Until the mixture is fit to real codes, its parameters are meaningless: the KL
        # is taken to N(0, I) meanwhile, and the mixture gets no gradient.
        self.register_buffer("mixture_ready", torch.tensor(False))
        self.some_parameters_wait = prior == "gmm"  # for DistributedDataParallel (train.Trainer.step_loss)

    def posterior(self, x):
        """The Gaussian posterior of an input.

        Parameters
        ----------
        {input_parameter}

        Returns
        -------
        tuple of torch.Tensor
            (mean, logvar), each (batch, latent_dim); logvar clamped to [-15, 10].
        """
        hidden = self.encoder(x)
        return self.to_mean(hidden), self.to_logvar(hidden).clamp(-15, 10)

    def embed(self, batch):
        """The features of a batch: the posterior means of the clean input, without input dropout.

        {embed_sections}
        """
        return self.posterior(batch.x)[0]

    def kl(self, mean, logvar, z):
        """Each cell's KL term: to N(0, I), or to the mixture (through its responsibilities at `z`).

        Parameters
        ----------
        mean, logvar : torch.Tensor
            (batch, latent_dim), the posteriors.
        z : torch.Tensor
            (batch, latent_dim), a sample of them.

        Returns
        -------
        torch.Tensor
            (batch,).
        """
        if self.prior == "normal" or not bool(self.mixture_ready):
            return 0.5 * (mean ** 2 + torch.exp(logvar) - 1 - logvar).sum(dim=1)
        log_pi = torch.log_softmax(self.mixture_logits, dim=0)
        log_density = -0.5 * (math.log(2 * math.pi) + self.mixture_logvars
                              + (z.unsqueeze(1) - self.mixture_means) ** 2 * torch.exp(-self.mixture_logvars)).sum(dim=2)
        log_gamma = torch.log_softmax(log_pi + log_density, dim=1)
        gamma = log_gamma.exp()
        per_component = kl_to_diagonal_gaussians(mean, logvar, self.mixture_means, self.mixture_logvars)
        return (gamma * per_component).sum(dim=1) + (gamma * (log_gamma - log_pi)).sum(dim=1)

    def loss(self, batch, epoch=None):
        """The loss terms on a batch: reconstruction + kl_weight x kl, with input dropout and a sampled code.

        Parameters
        ----------
        {batch_parameter}
        epoch : int or None
            The training epoch the loss is taken in, whose KL weight KLWarmup has set (the steps' and the losses its
            record reports); None, outside training: the whole KL (weight 1).

        Returns
        -------
        dict of torch.Tensor
            Scalar terms: loss, reconstruction, kl, kl_weight.
        """
        mean, logvar = self.posterior(self.input_dropout(batch.x))
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        reconstruction = reconstruction_nll(self.decoder, z, batch)
        kl = self.kl(mean, logvar, z).mean()
        weight = 1.0 if epoch is None else self.kl_weight
        return {"loss": reconstruction + weight * kl, "reconstruction": reconstruction, "kl": kl,
                "kl_weight": torch.tensor(weight)}

    @torch.no_grad()
    def fit_mixture(self, means: np.ndarray, seed: int):
        """Initialise the mixture prior from a diagonal GaussianMixture fit on posterior means.

        Parameters
        ----------
        means : numpy.ndarray
            (n_cells, latent_dim), the posterior means.
        seed : int
            GaussianMixture's random state.
        """
        from sklearn.mixture import GaussianMixture

        n_components = self.mixture_logits.shape[0]
        gmm = GaussianMixture(n_components=min(n_components, len(means)), covariance_type="diag",
                              random_state=seed, reg_covar=1e-4).fit(means)
        k = gmm.weights_.shape[0]
        device = self.mixture_means.device
        # Components beyond the number of cells (a tiny input) keep a negligible weight.
        weights = np.full(n_components, 1e-6)
        weights[:k] = gmm.weights_
        self.mixture_logits.copy_(torch.as_tensor(np.log(weights / weights.sum()), dtype=torch.float32, device=device))
        self.mixture_means[:k] = torch.as_tensor(gmm.means_, dtype=torch.float32, device=device)
        self.mixture_logvars[:k] = torch.as_tensor(np.log(gmm.covariances_), dtype=torch.float32, device=device)
        self.mixture_ready.fill_(True)


class KLWarmup(Callback):
    """The KL term's warm-up, a callback of the training loop.

    Epoch e weighs the term min(1, e / warmup_epochs) (1 from the first epoch when warmup_epochs is 0), set as the
    model's kl_weight when the epoch starts, so that the epoch's steps and the losses its record reports weigh it
    alike; 1 again once training ends. With the gmm prior, the mixture is fit to the posterior means once, at the end
    of the epoch where the warm-up ends (`warm_at`).

    Parameters
    ----------
    warmup_epochs : int
        Epochs over which the weight rises from 0 to 1.
    seed : int
        GaussianMixture's random state.
    """

    def __init__(self, warmup_epochs: int, seed: int):
        self.warmup_epochs, self.seed = warmup_epochs, seed

    def weight(self, epoch: int) -> float:
        """The KL weight of an epoch (1-based): min(1, epoch / warmup_epochs)."""
        return 1.0 if self.warmup_epochs <= 0 else min(1.0, epoch / self.warmup_epochs)

    def warm_at(self, epochs: int) -> int:
        """The epoch whose end ends the warm-up, in a training of `epochs`: the first at the earliest, the last at
        the latest (a shorter training still fits its mixture)."""
        return min(max(self.warmup_epochs, 1), epochs)

    def on_epoch_start(self, state):
        state.model.kl_weight = self.weight(state.epoch)

    def on_epoch_end(self, state, record):
        if state.epoch == self.warm_at(state.epochs) and state.model.prior == "gmm":
            state.model.fit_mixture(state.trainer.encode(state.model, state.data), self.seed)

    def on_train_end(self, state):
        state.model.kl_weight = 1.0


@shared_doc
def fit(data: TrainData, latent_dim: int, network: Mapping, config: TrainConfig, trainer: Trainer, seed: int, *,
        kl_warmup: int) -> Fitted:
    """Train `VariationalAutoEncoder(**network)` on `data` as `config` says, the KL term warmed up (`KLWarmup`).

    Parameters
    ----------
    {fit_parameters}
    kl_warmup : int
        Epochs over which the KL weight rises from 0 to 1 (`KLWarmup`).

    Returns
    -------
    scatac.train.Fitted
        features: (n_cells, latent_dim) float32, the posterior means; model: the trained VariationalAutoEncoder;
        history: one record per epoch; extra: the prior and n_components. network["n_components"] None means
        DEFAULT_COMPONENTS (the scripts pass the run's K instead).
    """
    network = {**network, "n_components": network["n_components"] or DEFAULT_COMPONENTS}
    model = VariationalAutoEncoder(data.n_peaks, latent_dim, **network).to(trainer.device)
    configure_decoder(model, data, config, trainer.device)
    warmup = KLWarmup(kl_warmup, seed)
    # not stopped during the KL warm-up, while the held-out loss's KL weight is still rising
    history = trainer.train(model, data, config, seed, callbacks=[warmup], min_epochs=warmup.warm_at(config.epochs))
    return Fitted(trainer.encode(model, data), model, history,
                  extra={"prior": network["prior"], "n_components": network["n_components"]})


__all__ = ["VariationalAutoEncoder", "KLWarmup", "kl_to_diagonal_gaussians", "fit"]
