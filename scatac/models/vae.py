"""The variational autoencoder (VAE.py) with a Gaussian-mixture prior (SCALE's model) or a standard normal one.

The encoder gives each cell a Gaussian posterior q(z|x) = N(mean, diag var), sampled with the
reparameterization trick; the decoder predicts which peaks are open (Bernoulli, each cell's depth
added to the logits, as the AE). The loss is the reconstruction plus a KL term whose weight rises
from 0 to 1 over the first `kl_warmup` epochs:

  gmm (default, SCALE): p(z) = sum_c pi_c N(mu_c, diag var_c), with learnable pi, mu, var, fit to
      the posterior means by scikit-learn's GaussianMixture when the warm-up ends;
      KL = sum_c gamma_c KL(q(z|x) || N(mu_c, var_c)) + KL(gamma || pi), where gamma are the
      cell's responsibilities p(c | z) at a sampled z;
  normal: KL(q(z|x) || N(0, I)).

Features are the posterior means, so the same seed gives the same features.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..batches import TrainData
from ..nn import PeakDropout, configure_decoder, mlp, reconstruction_nll
from ..train import Fitted, Trainer, early_stopping

DEFAULT_COMPONENTS = 8  # mixture components when neither the caller nor the labels say how many


def kl_to_diagonal_gaussians(mean, logvar, prior_mean, prior_logvar):
    """KL(N(mean, e^logvar) || N(prior_mean_c, e^prior_logvar_c)) summed over dimensions: (batch, components)."""
    mean, logvar = mean.unsqueeze(1), logvar.unsqueeze(1)
    return 0.5 * (prior_logvar - logvar + torch.exp(logvar - prior_logvar)
                  + (mean - prior_mean) ** 2 * torch.exp(-prior_logvar) - 1).sum(dim=2)


class VariationalAutoEncoder(nn.Module):
    """n_peaks -> hidden_dims -> (mean, logvar) of latent_dim -> reversed hidden_dims -> n_peaks logits."""

    def __init__(self, n_peaks: int, latent_dim: int, hidden_dims=(256,), input_dropout: float = 0.5,
                 dropout: float = 0.1, prior: str = "gmm", n_components: int = DEFAULT_COMPONENTS, kl_warmup: int = 10):
        super().__init__()
        self.config = dict(n_peaks=n_peaks, latent_dim=latent_dim, hidden_dims=tuple(hidden_dims),
                           input_dropout=input_dropout, dropout=dropout, prior=prior, n_components=n_components,
                           kl_warmup=kl_warmup)
        self.prior = prior
        self.kl_warmup = kl_warmup
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

    def posterior(self, x):
        hidden = self.encoder(x)
        return self.to_mean(hidden), self.to_logvar(hidden).clamp(-15, 10)

    def embed(self, batch):
        return self.posterior(batch.x)[0]

    def kl(self, mean, logvar, z):
        if self.prior == "normal" or not bool(self.mixture_ready):
            return 0.5 * (mean ** 2 + torch.exp(logvar) - 1 - logvar).sum(dim=1)
        log_pi = torch.log_softmax(self.mixture_logits, dim=0)
        log_density = -0.5 * (math.log(2 * math.pi) + self.mixture_logvars
                              + (z.unsqueeze(1) - self.mixture_means) ** 2 * torch.exp(-self.mixture_logvars)).sum(dim=2)
        log_gamma = torch.log_softmax(log_pi + log_density, dim=1)
        gamma = log_gamma.exp()
        per_component = kl_to_diagonal_gaussians(mean, logvar, self.mixture_means, self.mixture_logvars)
        return (gamma * per_component).sum(dim=1) + (gamma * (log_gamma - log_pi)).sum(dim=1)

    def kl_weight(self, epoch):
        if epoch is None or self.kl_warmup <= 0:
            return 1.0
        return min(1.0, epoch / self.kl_warmup)

    def loss(self, batch, epoch=None):
        mean, logvar = self.posterior(self.input_dropout(batch.x))
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        reconstruction = reconstruction_nll(self.decoder, z, batch)
        kl = self.kl(mean, logvar, z).mean()
        weight = self.kl_weight(epoch)
        return {"loss": reconstruction + weight * kl, "reconstruction": reconstruction, "kl": kl,
                "kl_weight": torch.tensor(weight)}

    @torch.no_grad()
    def fit_mixture(self, means: np.ndarray, seed: int):
        """Initialise the mixture prior from a diagonal GaussianMixture fit on posterior means."""
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


def fit(data: TrainData, latent_dim: int, options: dict, trainer: Trainer, seed: int) -> Fitted:
    """Train a VariationalAutoEncoder on `data`; features are the posterior means.

    options["n_components"] None means DEFAULT_COMPONENTS (the scripts pass the run's K instead).
    """
    n_components = options["n_components"] or DEFAULT_COMPONENTS
    model = VariationalAutoEncoder(data.n_peaks, latent_dim, options["hidden_dims"], options["input_dropout"],
                                   options["dropout"], options["prior"], n_components,
                                   options["kl_warmup"]).to(trainer.device)
    configure_decoder(model, data, options, trainer.device)
    init_epoch = min(max(options["kl_warmup"], 1), options["epochs"])

    def fit_mixture_when_warm(epoch, record):
        if options["prior"] == "gmm" and epoch == init_epoch:
            model.fit_mixture(trainer.encode(model, data), seed)

    # not stopped during the KL warm-up, while the held-out loss's KL weight is still rising
    history = trainer.train(model, data, options["epochs"], options["batch_size"], options["lr"], seed,
                            weight_decay=options["weight_decay"], epoch_callback=fit_mixture_when_warm,
                            neighbor_weight=options["neighbor_weight"],
                            min_epochs=init_epoch, **early_stopping(options))
    return Fitted(trainer.encode(model, data), model, history,
                  extra={"prior": options["prior"], "n_components": n_components})
