"""One ``ssmzoo data`` command, as a data set's module declares it, and how a command runs (``commands.py`` lists
them and parses the command line); in a module of its own, so the data sets and the list of commands import it,
not each other."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DataCommand:
    """One ``ssmzoo data`` command: its name, a one-line help, a function adding its arguments to an
    argparse parser and a function running it on the parsed arguments."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], object]


# What a command raises for arguments it cannot use (a bad value, an existing output, a missing input file):
# reported as a usage error, one line and exit status 2 as argparse does, not as a traceback.
USAGE_ERRORS = (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError)


def run_command(prog: str, run: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> object:
    """``run(args)``, with a usage error (``USAGE_ERRORS``) reported as ``<prog>: error: <message>`` on one line of
    stderr and exit status 2."""
    try:
        return run(args)
    except USAGE_ERRORS as error:
        message = " ".join(str(error).split())  # one line, whatever the message
        message = message.removeprefix(f"{prog}: ")
        sys.stderr.write(f"{prog}: error: {message} (see {prog} --help)\n")
        raise SystemExit(2) from error
