"""AE.py: a plain fully-connected autoencoder for scATAC-seq, trained as a denoising one.

    python AE.py <epochs> <data> <outdir> <latent_dim> [labels] [--options]

The encoder reads the transformed peaks of a cell (TF-IDF by default) through input dropout; the
decoder predicts which peaks are open (Bernoulli), each cell's depth added to its logits. The
network and its loss: scatac/models/ae.py; its options: scatac.methods.AE; the run: common.py.
"""
import common
from scatac import methods

if __name__ == "__main__":
    common.main(methods.AE)
