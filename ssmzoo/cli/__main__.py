"""``python -m ssmzoo.cli ...`` is the ``ssmzoo`` command."""

from .entry import main

main()
