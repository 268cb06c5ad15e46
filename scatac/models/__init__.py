"""The autoencoders: each module holds one network, its loss and its training recipe (`fit`).

    ae          AutoEncoder: plain, trained as a denoising autoencoder
    sparse_ae   SparseAutoEncoder: a sigmoid code kept sparse by a KL penalty
    stacked_ae  StackedAutoEncoder: greedy layer-wise pretraining, then fine-tuning
    vae         VariationalAutoEncoder: Gaussian posterior, Gaussian-mixture (SCALE) or normal prior

`fit(data, latent_dim, network, config, trainer, seed, **schedule) -> train.Fitted`: the model class's
keyword arguments (`network`), the training loop's `config` (train.TrainConfig) and the fit's own
schedule (StackedAE's pretrain_epochs, the VAE's kl_warmup), all resolved by the method's card
(scatac.methods.Method.resolve), which alone holds their defaults. Importing a model imports torch:
the package imports them only when a model is fitted (scatac.tl.MODEL_MODULES).
"""
