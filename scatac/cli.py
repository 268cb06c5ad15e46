"""The command line of the method scripts: argparse built from the declared options, one-line errors.

    <epochs...> <data> <outdir> <latent_dim> [labels] [--options]     (the original suite's order)

A usage error or an InputError is one line on stderr and exit status 2; a training failure exit 1;
Ctrl-C exit 130. Nothing here imports torch, anndata or matplotlib: --help answers at once.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable

from .errors import InputError, Terminated, TrainingFailed
from .methods import Method
from .params import LATENT_DIM, RUN

DATA_HELP = "10x/SCALE folder, Cell Ranger .h5, .h5ad, .mtx[.gz] or peaks x cells .txt/.tsv/.csv[.gz]"
LABELS_HELP = "optional labels: 'barcode<TAB>label' lines or one label per line in cell order"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `error: <prog>: <problem>`, exit 2."""

    def error(self, message):
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def add_data_arguments(parser: ArgumentParser, latent_help: str = LATENT_DIM.help):
    """<data> <outdir> <latent_dim> [labels], as every script and compare.py take them."""
    parser.add_argument("data", help=DATA_HELP)
    parser.add_argument("outdir", help="output folder (created if missing)")
    parser.add_argument("latent_dim", type=int, help=latent_help)
    parser.add_argument("labels", nargs="?", default=None, help=LABELS_HELP)


def method_parser(method: Method) -> ArgumentParser:
    """<epochs...> <data> <outdir> <latent_dim> [labels], then the method's options and the run's, by group."""
    parser = ArgumentParser(prog=f"{method.name}.py", description=method.summary,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in method.epoch_options:
        parser.add_argument(name, type=int, help=method.options[name].help)
    add_data_arguments(parser)
    groups = {}
    method.options.add_arguments(parser, groups, skip=method.epoch_options)
    RUN.add_arguments(parser, groups)
    return parser


def checked_arguments(method: Method, argv=None) -> tuple[dict, dict]:
    """Parse and check a script's arguments before any work: (settings, the method's options).

    settings holds every argument by name (what run.json records); options are the method's own,
    checked by their declared rules, the positional epochs named as such and the rest by flag.
    """
    args = vars(method_parser(method).parse_args(argv))
    options = method.options.resolve({name: args[name] for name in method.options.params}, where=method.name,
                                     label=lambda p: p.name if p.name in method.epoch_options else p.flag)
    settings = {**args, **options, **RUN.resolve({name: args[name] for name in RUN.params}, label=lambda p: p.flag)}
    settings["latent_dim"] = LATENT_DIM.check(args["latent_dim"], "latent_dim")
    return settings, options


def _terminate(signum, frame):
    raise Terminated()


def _collective_failed(exc: RuntimeError) -> bool:
    """Whether `exc` is torch.distributed's (a peer gone, a timeout) in a process that torchrun started."""
    text = str(exc).lower()
    return "RANK" in os.environ and (type(exc).__name__.startswith("Dist")
                                     or any(word in text for word in ("gloo", "nccl", "connection", "timed out")))


def run_cli(main: Callable, *args):
    """Run a script's `main`, each way of ending as one line on stderr: a user error exit 2, a failed
    training exit 1, Ctrl-C (SIGINT) 130, SIGTERM 143; the earlier result stays as it was."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(*args)
    except InputError as exc:
        print(f"error: {exc.where}: {exc.problem}", file=sys.stderr)
        sys.exit(2)
    except TrainingFailed as exc:
        print(f"error: training: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("error: terminated", file=sys.stderr)
        sys.exit(143)
    except RuntimeError as exc:
        if not _collective_failed(exc):
            raise
        # under torchrun a collective fails on every rank once one rank dies or hangs (torch's timeout): one line
        # naming the rank instead of a traceback per process; torchrun then stops the job
        print(f"error: rank {os.environ['RANK']}: training across processes failed: {str(exc).splitlines()[0][:200]}",
              file=sys.stderr)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def option_overrides(method: Method, argv) -> dict:
    """The method's options among `argv` (flags of other methods ignored), checked: {name: value} of those given."""
    not_given = object()
    parser = argparse.ArgumentParser(add_help=False)
    method.options.add_arguments(parser, {}, skip=method.epoch_options)
    parser.set_defaults(**{p.name: not_given for p in method.options})
    given = vars(parser.parse_known_args(list(argv))[0])
    return {name: method.options[name].check(value, method.options[name].flag) for name, value in given.items()
            if value is not not_given}
