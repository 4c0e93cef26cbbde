"""The entry point of the ``ssmzoo`` command: chooses the subcommand and imports only what it needs.

``ssmzoo --help`` is answered from here without loading torch or Lightning (seconds of imports);
``fit``, ``validate``, ``test`` and ``predict`` go to the LightningCLI (``app.py``), ``generate`` to
``generate.py`` and ``data`` to ``ssmzoo.data.commands``.
"""

from __future__ import annotations

import sys

from ..allocator import keep_freed_memory_from_env  # ctypes only: light
from .subcommands import SUBCOMMANDS
from .threads import prepare_environment  # os only until a thread count is chosen

USAGE = f"usage: ssmzoo [-h] {{{','.join(SUBCOMMANDS)}}} ..."


def top_help() -> str:
    import textwrap

    width = max(map(len, SUBCOMMANDS))
    indent = " " * (width + 6)
    lines = [
        USAGE,
        "",
        "Train and evaluate ssmzoo's tasks with Lightning, from YAML configs.",
        "",
        "subcommands:",
        *(textwrap.fill(text, 110, initial_indent=f"    {name:<{width}}  ", subsequent_indent=indent)
          for name, text in SUBCOMMANDS.items()),
        "",
        "Each subcommand has its own --help (ssmzoo fit --help lists the tasks, datamodules and trainer flags).",
        "Common flags of fit/validate/test/predict: --config FILE, --ckpt_path PATH|last, --threads N,",
        "--trainer.accelerator, --trainer.devices, --trainer.max_steps, --trainer.precision (e.g. bf16-mixed).",
    ]
    return "\n".join(lines)


def data_main(argv: list[str]) -> None:
    """``ssmzoo data ...`` (``ssmzoo.data.commands``, imported only for it)."""
    from ..data.commands import main as data_commands

    data_commands(argv)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``ssmzoo`` console script (``args``: the command line without the program name)."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_help())
        sys.exit(0 if argv else 2)
    if argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        sys.exit(f"{USAGE}\nssmzoo: error: unknown subcommand {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}")
    keep_freed_memory_from_env()  # this process is ours: large activations reused without page faults
    if argv[0] == "data":
        data_main(argv[1:])
        return
    prepare_environment()  # before torch loads: OpenMP reads its settings once, at start-up
    if argv[0] == "generate":
        from .generate import main as generate_main

        generate_main(argv[1:])
        return
    from .app import UsageError, run

    try:
        run(None if args is None else argv)
    except Exception as error:
        if not (isinstance(error, UsageError) or getattr(error, "ssmzoo_usage_error", False)):
            raise
        # a bad config value, a missing file or checkpoint: the message says what and where, a traceback adds
        # nothing but length
        print(f"ssmzoo: error: {error}", file=sys.stderr)
        sys.exit(2)
