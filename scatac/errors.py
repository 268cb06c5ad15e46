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
    """A problem with what the user gave: `where` names the file, option or parameter, `problem` says what is wrong.

    A ValueError, as scikit-learn's InvalidParameterError is, so notebook code can catch either.
    """

    def __init__(self, where, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that every open context (a staging folder, a lock) unwinds;
    a BaseException, as KeyboardInterrupt is, so that no `except Exception` swallows it."""


class TrainingFailed(RuntimeError):
    """A loss turned NaN or infinite, or a model gave non-finite features."""


def fail(where, problem: str) -> NoReturn:
    raise InputError(where, problem)


def _quiet_rank() -> bool:
    """A process that torchrun started as any rank but 0: its messages would repeat rank 0's."""
    return os.environ.get("RANK", "0") not in ("", "0")


def info(message: str):
    """Progress goes to stderr, so stdout carries only results; from rank 0 only under torchrun."""
    if not _quiet_rank():
        print(message, file=sys.stderr, flush=True)


def warn(message: str):
    if not _quiet_rank():
        print(f"warning: {message}", file=sys.stderr, flush=True)
