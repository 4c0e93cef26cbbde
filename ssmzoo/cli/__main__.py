"""``python -m ssmzoo.cli ...`` is the ``ssmzoo`` command."""

from .main import main

main()
