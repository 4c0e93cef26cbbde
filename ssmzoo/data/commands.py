"""``ssmzoo data NAME ...``: a registry of data commands, each with its own argparse arguments.

A data set that has something to write or show makes a :class:`~ssmzoo.data.data_command.DataCommand` in its own
module and is listed in :func:`data_commands`;
``ssmzoo data --help`` lists them and ``ssmzoo data NAME --help`` shows that command's arguments.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .data_command import DataCommand, run_command


def _paths_arguments(parser: argparse.ArgumentParser) -> None:
    """``ssmzoo data paths`` takes no arguments."""


def _paths(args: argparse.Namespace) -> list[tuple[str, Path, bool]]:
    """Print where each data set is looked for by default and whether it is there."""
    from .lra.fashion_mnist import DEBIAN_DIR as fashion_mnist_dir
    from .lra.image import default_data_dir as cifar_dir
    from .lra.pathfinder import default_data_dir as pathfinder_dir
    from .lra.text import default_aan_dir, default_imdb_dir
    from .paths import data_root
    from .timeseries.informer import default_csv

    rows = [
        ("listops (generated, cached)", data_root() / "lra" / "listops", "--data.init_args.data_dir"),
        ("LRA Image (CIFAR-10)", cifar_dir(), "--data.init_args.data_dir"),
        ("LRA Text (IMDB)", default_imdb_dir(), "--data.init_args.data_dir"),
        ("LRA Retrieval (AAN)", default_aan_dir(), "--data.init_args.data_dir"),
        ("LRA Pathfinder", pathfinder_dir(32), "--data.init_args.data_dir"),
        ("LRA Path-X", pathfinder_dir(128), "--data.init_args.data_dir"),
        ("Pathfinder (generated)", data_root() / "generated", "ssmzoo data pathfinder --out"),
        ("Fashion-MNIST (stand-in)", Path(fashion_mnist_dir), "--data.init_args.data_dir"),
        ("ETTh1", default_csv("ETTh1"), "--data.init_args.path"),
        ("ETTh2", default_csv("ETTh2"), "--data.init_args.path"),
        ("ETTm1", default_csv("ETTm1"), "--data.init_args.path"),
        ("ETTm2", default_csv("ETTm2"), "--data.init_args.path"),
        ("Shakespeare (LM default)", data_root() / "shakespeare" / "texts", "--data.init_args.path"),
    ]
    print(f"data root: {data_root()}  (set $SSMZOO_DATA to move it)")
    found = []
    for name, path, flag in rows:
        present = path.exists()
        found.append((name, path, present))
        print(f"  {name:<28} {'found  ' if present else 'missing'} {path}   (elsewhere: {flag} PATH)")
    print("AR(p) and the synthetic tasks are generated in memory and need no files.")
    return found


PATHS = DataCommand(
    name="paths",
    help="show where each data set is looked for by default, whether it is there, and the flag to point elsewhere",
    add_arguments=_paths_arguments,
    run=_paths,
)


def data_commands() -> dict[str, DataCommand]:
    """Every ``ssmzoo data`` command by name: one import and one entry per command."""
    from .lm.shakespeare import SHAKESPEARE
    from .lra.listops.command import LISTOPS
    from .lra.pathfinder_generator import PATHFINDER

    commands = (
        LISTOPS,
        PATHFINDER,
        SHAKESPEARE,
        PATHS,
    )
    return {command.name: command for command in commands}


def build_parser(prog: str = "ssmzoo data") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Write or locate ssmzoo's data sets.")
    subparsers = parser.add_subparsers(dest="command", metavar="NAME", required=True)
    for command in data_commands().values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> object:
    """Parse ``argv`` (the words after ``ssmzoo data``) and run the named command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(f"{parser.prog} {args.command}", data_commands()[args.command].run, args)
