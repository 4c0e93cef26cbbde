"""One ``ssmzoo data`` command, as a data set's module declares it (``commands.py`` lists them and parses
the command line); in a module of its own, so the data sets and the list of commands import it, not each other."""

from __future__ import annotations

import argparse
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
