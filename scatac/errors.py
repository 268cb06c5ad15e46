"""The errors the suite raises on purpose, and its voice on stderr.

An InputError is the user's to fix (a file, an option, a parameter); the command line prints it as
one line, `error: <file or option>: <problem>`, and exits with status 2. TrainingFailed is the
model's (a loss that turned NaN); compare.py reports it as that method's row.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn


class InputError(ValueError):
    """A problem with what the user gave: a file, an option or a parameter.

    The command line prints it as one line, `error: <where>: <problem>`, and exits with status 2. A ValueError, as
    scikit-learn's InvalidParameterError is, so notebook code can catch either.

    Parameters
    ----------
    where : str or Path
        The file, option or parameter at fault.
    problem : str
        What is wrong, and what is allowed.

    Attributes
    ----------
    where : str
    problem : str
    """

    def __init__(self, where, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that every open context (a staging folder, a lock) unwinds.

    A BaseException, as KeyboardInterrupt is, so that no `except Exception` swallows it; the command line exits 143.
    """


class TrainingFailed(RuntimeError):
    """A loss turned NaN or infinite, or a model gave non-finite features: the model's failure, not the user's.

    The command line exits 1; compare.py reports it as that method's row and goes on.
    """


def fail(where, problem: str) -> NoReturn:
    """Raise an InputError: `where` is at fault, `problem` says how.

    Parameters
    ----------
    where : str or Path
        The file, option or parameter.
    problem : str
        What is wrong, and what is allowed.

    Raises
    ------
    InputError
        Always.
    """
    raise InputError(where, problem)


def _quiet_rank() -> bool:
    """A process that torchrun started as any rank but 0: its messages would repeat rank 0's."""
    return os.environ.get("RANK", "0") not in ("", "0")


def info(message: str):
    """Print a progress line on stderr, so that stdout carries only results; from rank 0 only under torchrun.

    Parameters
    ----------
    message : str
        The line.
    """
    if not _quiet_rank():
        print(message, file=sys.stderr, flush=True)


def warn(message: str):
    """Print `warning: <message>` on stderr; from rank 0 only under torchrun.

    Parameters
    ----------
    message : str
        The warning.
    """
    if not _quiet_rank():
        print(f"warning: {message}", file=sys.stderr, flush=True)


__all__ = ["InputError", "TrainingFailed", "Terminated", "fail", "info", "warn"]
