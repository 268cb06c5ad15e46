"""The autoencoders: each module holds one network, its loss and its training recipe (`fit`).

    ae          AutoEncoder: plain, trained as a denoising autoencoder
    sparse_ae   SparseAutoEncoder: a sigmoid code kept sparse by a KL penalty
    stacked_ae  StackedAutoEncoder: greedy layer-wise pretraining, then fine-tuning
    vae         VariationalAutoEncoder: Gaussian posterior, Gaussian-mixture (SCALE) or normal prior

`fit(data, latent_dim, options, trainer, seed) -> train.Fitted`; the options are those declared on
the method's card (scatac.methods). Importing a model imports torch: the package imports them only
when a model is fitted.
"""
