"""A run's options have one default, the card's (issue 21): the card resolves them into frozen RunOptions (the model
class's arguments, the loop's TrainConfig, the fit's schedule), the model classes keep no defaults, nn.py holds
layers and losses only, and no function on the way from tl to the loop (nor in export.py) takes more than six
required positional parameters."""
import ast
import dataclasses
import inspect
import textwrap

import pytest

import scatac
from scatac import callbacks, export, methods, nn, tl, train
from scatac.batches import TrainData
from scatac.models import ae, sparse_ae, stacked_ae, vae
from scatac.train import TrainConfig, Trainer

MODELS = {"AE": (ae, ae.AutoEncoder), "SparseAE": (sparse_ae, sparse_ae.SparseAutoEncoder),
          "StackedAE": (stacked_ae, stacked_ae.StackedAutoEncoder), "VAE": (vae, vae.VariationalAutoEncoder)}


def keyword_only(function) -> dict:
    """{name: default} of the keyword-only parameters of `function`."""
    return {p.name: p.default for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("card", methods.NEURAL, ids=lambda card: card.name)
def test_train_config_is_frozen_and_holds_the_cards_defaults(card):
    run = card.resolve({})
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(TrainConfig)), "TrainConfig must not hold defaults of its own"
    for f in dataclasses.fields(TrainConfig):
        option = card.training_epochs if f.name == "epochs" else f.name
        assert getattr(run.training, f.name) == card.options[option].default, f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.training.epochs = 1
    with pytest.raises(TypeError):
        run.network["dropout"] = 0.5
    # a given option replaces the card's default, checked by its rule
    assert card.resolve({"lr": 0.01, "decoder": "full"}).training.lr == 0.01
    with pytest.raises(scatac.InputError, match="decoder"):
        card.resolve({"decoder": "half"})


def test_each_card_gives_its_own_defaults():
    """The sampled decoder's 'auto' is the declared default (not 'full'); the neighbour term is the card's own."""
    assert {card.name: card.resolve({}).training.decoder for card in methods.NEURAL} == dict.fromkeys(MODELS, "auto")
    terms = {card.name: (card.resolve({}).training.neighbor_weight, card.resolve({}).training.neighbor_after)
             for card in methods.NEURAL}
    # SparseAE and StackedAE train 20 epochs (StackedAE's fine-tuning): the term for their second half
    assert terms == {"AE": (0.1, 0), "SparseAE": (0.1, 10), "StackedAE": (0.1, 10), "VAE": (0.1, 0)}
    stacked = methods.STACKED_AE.resolve({"pretrain_epochs": 2, "finetune_epochs": 7})
    assert stacked.training.epochs == 7 and dict(stacked.schedule) == {"pretrain_epochs": 2}
    assert dict(methods.VAE.resolve({}).schedule) == {"kl_warmup": 10}


@pytest.mark.parametrize("card", methods.NEURAL, ids=lambda card: card.name)
def test_every_option_of_a_card_has_one_taker(card):
    training = {f.name for f in dataclasses.fields(TrainConfig)} - {"epochs"} | {card.training_epochs}
    takers = [set(card.network), set(card.schedule), training, {"transform"}]  # tl reads the transform
    assert sum(map(len, takers)) == len(set().union(*takers)), "an option is taken twice"
    assert set().union(*takers) == set(card.options.params)


@pytest.mark.parametrize("name", MODELS)
def test_model_classes_keep_no_defaults_and_take_the_cards_network(name):
    module, model_class = MODELS[name]
    card = methods.ALL[name]
    parameters = list(inspect.signature(model_class.__init__).parameters.values())[1:]
    assert [p.name for p in parameters[:2]] == ["n_peaks", "latent_dim"]
    assert all(p.default is p.empty for p in parameters), f"{name} holds a default its card holds"
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters[2:])
    assert set(keyword_only(model_class.__init__)) == set(card.network)
    # the fit's keyword arguments are the card's schedule, without defaults either
    schedule = keyword_only(module.fit)
    assert set(schedule) == set(card.schedule) and all(d is inspect.Parameter.empty for d in schedule.values())


def test_a_model_rebuilds_from_its_config(demo_adata):
    data = TrainData.from_counts(demo_adata.X, "tfidf")
    for name, (module, model_class) in MODELS.items():
        network = dict(methods.ALL[name].resolve({"hidden_dims": (8,)}).network)
        network.update({"n_components": 3} if name == "VAE" else {})
        model = model_class(data.n_peaks, 4, **network)
        rebuilt = model_class(**model.config)
        assert rebuilt.config == model.config and rebuilt.state_dict().keys() == model.state_dict().keys()


def test_nn_holds_layers_and_losses_only():
    for name in ("negatives_per_batch", "SAMPLED_FROM_CELLS", "decoder_for", "configure_decoder"):
        assert not hasattr(nn, name), f"nn.{name} is run policy"
        assert hasattr(train, name)
    assert "options" not in inspect.getsource(nn)


def required_positional(function) -> list:
    return [p.name for p in inspect.signature(function).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            and p.name not in ("self", "cls")]


ON_THE_WAY = [tl._fit_neural, tl.ae, tl.sparse_ae, tl.stacked_ae, tl.vae, methods.Method.resolve,
              TrainConfig.from_options, TrainData.from_counts, scatac.pp.reference_neighbors,
              ae.fit, sparse_ae.fit, stacked_ae.fit, stacked_ae.pretrain, stacked_ae.finetune, vae.fit,
              train.configure_decoder, train.decoder_for, Trainer.train, Trainer.batch_source, Trainer.full_loss,
              Trainer.encode, callbacks.TrainState, callbacks.FullLossReport, callbacks.EarlyStopping, vae.KLWarmup,
              *(model_class for _, model_class in MODELS.values())]
EXPORT = [f for _, f in inspect.getmembers(export, inspect.isfunction) if f.__module__ == export.__name__]


@pytest.mark.parametrize("function", ON_THE_WAY + EXPORT, ids=lambda f: f.__qualname__)
def test_at_most_six_required_positional_parameters(function):
    assert len(required_positional(function)) <= 6, required_positional(function)


def test_the_training_loop_stays_short():
    """Trainer.train's code, its docstring aside, under 50 lines: what happens around the steps is a Callback."""
    function = ast.parse(textwrap.dedent(inspect.getsource(Trainer.train))).body[0]
    code = function.body[1:]  # the docstring is body[0]
    assert code[-1].end_lineno - code[0].lineno + 1 < 50
