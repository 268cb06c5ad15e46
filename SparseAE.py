"""SparseAE.py: an autoencoder whose code is kept sparse by Ng's KL sparsity penalty.

    python SparseAE.py <epochs> <data> <outdir> <latent_dim> [labels] [--options]

The AE's encoder and decoder with a sigmoid code, and a loss that adds
beta * sum_j KL(rho || rho_hat_j) so that each code unit fires in about a fraction rho of the
cells. The network and its loss: scatac/models/sparse_ae.py; its options: scatac.methods.SPARSE_AE.
"""
import common
from scatac import methods

if __name__ == "__main__":
    common.main(methods.SPARSE_AE)
