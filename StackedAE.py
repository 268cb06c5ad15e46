"""StackedAE.py: a stacked autoencoder, pretrained greedily layer by layer, then fine-tuned end to end.

    python StackedAE.py <pretrain_epochs> <finetune_epochs> <data> <outdir> <latent_dim> [labels] [--options]

Each layer is first trained as a shallow autoencoder of the (fixed) codes of the layer below, then
the whole stack is fine-tuned on the peaks. The network, its losses and both phases:
scatac/models/stacked_ae.py; its options: scatac.methods.STACKED_AE.
"""
import common
from scatac import methods

if __name__ == "__main__":
    common.main(methods.STACKED_AE)
