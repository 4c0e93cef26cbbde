"""``python -m ssmzoo.cli ...`` is the ``ssmzoo`` command."""

from .app import main

main()
