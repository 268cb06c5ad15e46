"""VAE.py: a variational autoencoder with a Gaussian-mixture prior (SCALE's model) or a standard normal one.

    python VAE.py <epochs> <data> <outdir> <latent_dim> [labels] [--options]

Gaussian posterior per cell, Bernoulli likelihood of the open peaks, a KL term warmed up over the
first epochs; features are the posterior means. The network and its loss: scatac/models/vae.py;
its options: scatac.methods.VAE (the mixture has as many components as the run has clusters).
"""
import common
from scatac import methods

if __name__ == "__main__":
    common.main(methods.VAE)
