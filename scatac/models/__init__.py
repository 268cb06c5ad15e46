"""The autoencoders: each module holds one network, its loss and its training recipe (`fit`).

    ae          AutoEncoder: plain, trained as a denoising autoencoder
    sparse_ae   SparseAutoEncoder: a sigmoid code kept sparse by a KL penalty
    stacked_ae  StackedAutoEncoder: greedy layer-wise pretraining, then fine-tuning
    vae         VariationalAutoEncoder: Gaussian posterior, Gaussian-mixture (SCALE) or normal prior

`fit(data, latent_dim, network, config, trainer, seed, **schedule) -> train.Fitted`: the model class's
keyword arguments (`network`), the training loop's `config` (train.TrainConfig) and the fit's own
schedule (StackedAE's pretrain_epochs, the VAE's kl_warmup), all resolved by the method's card
(scatac.methods.Method.resolve), which alone holds their defaults. Importing a model imports torch:
the package imports them only when a model is fitted (scatac.tl.MODEL_MODULES). The numpydoc text
the models' docstrings share is written once, in MODEL_DOCS, and filled in by `shared_doc` (`fill_doc`).
"""

import re
import textwrap
import types

# a docstring line that holds only "{name}": the place of a shared text block (fill_doc)
_PLACEHOLDER = re.compile(r"^( *)\{(\w+)\}$", re.M)


def fill_doc(**blocks):
    """A decorator that fills the placeholder lines of a docstring with shared text, as scanpy's `_doc_params` does.

    A placeholder is a line that holds only `{name}`; it becomes `blocks[name]`, every line of the block indented as
    the placeholder line is, so that a docstring Python 3.13 dedented at compile time is filled alike. Nothing else is
    touched (no str.format: the docstrings hold braces of their own), and a placeholder no block fills is an error when
    the module is imported. A block may hold placeholders of other blocks. On a class it fills the class's docstring
    and those of the functions defined in it. scatac.tl's functions and the models share their common numpydoc text
    this way (the blocks: scatac.tl's SHARED_DOCS, this package's MODEL_DOCS).

    Parameters
    ----------
    **blocks
        name: the block's text, numpydoc entries (or whole sections) indented as in a docstring; it is dedented and
        its outer blank lines dropped.

    Returns
    -------
    callable
        The decorator: it fills the docstrings in place and returns the function or class.
    """
    texts = {name: textwrap.dedent(text).strip("\n").splitlines() for name, text in blocks.items()}

    def fill(doc: str, where: str) -> str:
        def block(match):
            indent, name = match.groups()
            if name not in texts:
                raise KeyError(f"{where}: the docstring's placeholder {{{name}}} names no block "
                               f"(blocks: {', '.join(sorted(texts))})")
            # a block may hold placeholders of other blocks
            return fill("\n".join(indent + line if line.strip() else "" for line in texts[name]), where)

        return _PLACEHOLDER.sub(block, doc)

    def decorate(obj):
        if obj.__doc__:
            obj.__doc__ = fill(obj.__doc__, obj.__qualname__)
        if isinstance(obj, type):
            for value in vars(obj).values():
                if isinstance(value, types.FunctionType) and value.__doc__:
                    value.__doc__ = fill(value.__doc__, value.__qualname__)
        return obj

    return decorate


# The numpydoc entries (and `embed`'s whole sections) the four models' docstrings share, filled in by
# `shared_doc`.
MODEL_DOCS = {
    "network_parameters": """
    n_peaks : int
        The input and output size.
    latent_dim : int
        The code's dimensions.
    hidden_dims : sequence of int
        Hidden layer sizes of the encoder, input side first (the decoder mirrors them).
    input_dropout : float
        Dropout on the input peaks (denoising).
    dropout : float
        Dropout after each hidden layer.
    """,
    "config_attribute": """
    config : dict
        The keyword arguments that rebuild it (model.pt stores them).
    """,
    "input_parameter": """
    x : scatac.batches.SparseRows or torch.Tensor
        (batch, n_peaks) transformed accessibility.
    """,
    "batch_parameter": """
    batch : scatac.batches.Batch
        A mini-batch on the model's device.
    """,
    "fit_parameters": """
    data : scatac.batches.TrainData
        The cells, transformed (or a store's, `scatac.streamed.StoredData`).
    latent_dim : int
        The code's dimensions.
    network : mapping
        The model class's keyword arguments, resolved by the method's card (`scatac.methods.Method.resolve`).
    config : scatac.train.TrainConfig
        What the training loop is asked.
    trainer : scatac.train.Trainer
        Where and how to train.
    seed : int
        The batches' order (the weights were seeded by the caller).
    """,
    # `loss` of the models whose loss takes no epoch (the VAE's own epoch entry follows {batch_parameter})
    "loss_parameters": """
    {batch_parameter}
    epoch : int or None
        The training epoch (unused here; the VAE's KL weight reads it).
    """,
    # the whole of `loss`'s sections in the models whose loss has no term but "loss"
    "loss_sections": """
    Parameters
    ----------
    {loss_parameters}

    Returns
    -------
    dict of torch.Tensor
        Scalar terms; "loss" is minimized.
    """,
    # the whole of `embed`'s sections, alike in every model: the training loop's call for the features
    "embed_sections": """
    Parameters
    ----------
    {batch_parameter}

    Returns
    -------
    torch.Tensor
        (batch, latent_dim).
    """,
}
shared_doc = fill_doc(**MODEL_DOCS)
