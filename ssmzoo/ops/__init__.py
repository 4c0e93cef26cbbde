"""The math of ssmzoo as functions: one package per op (``ssmzoo/ops/<op>/``), each with a readable
reference and fast backends behind one dispatch (``dispatch.py``), plus what several ops share
(``segments.py`` packed documents, ``chunks.py`` chunked-scan machinery, ``extension.py`` C++ builds).

:func:`index` lists every op: each op package registers its dispatcher with one line on its public entry
(``@register_op(dispatch)``, see ``dispatch.py``), and ``index`` imports every op package, so a new
package under ``ssmzoo/ops/`` is listed (and covered by the dispatch tests) without editing any list.
"""

from __future__ import annotations

import importlib
import pkgutil

from .dispatch import Dispatcher, registered_ops


def index() -> dict[str, Dispatcher]:
    """Every op's dispatcher by op name (sorted), after importing every op package under ``ssmzoo.ops``."""
    for info in pkgutil.iter_modules(__path__, f"{__name__}."):
        if info.ispkg:
            importlib.import_module(info.name)
    return dict(sorted(registered_ops().items()))


__all__ = ["index"]
