"""``python -m ssmzoo.data.lra.listops --out DIR``: write generated ListOps files."""

import sys

from .command import main

main(sys.argv[1:])
