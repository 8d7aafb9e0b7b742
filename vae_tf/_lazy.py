"""Names a package loads on first use (PEP 562), so that importing it stays cheap: TensorFlow and
Keras are imported by the modules that need them, when they are needed."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_names(package: str, names: dict[str, str], own: dict) -> tuple[Callable, Callable]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` whose ``names`` (``{name: module}``) load
    from their module on first use; ``own`` is the package's ``globals()`` (read when listed)."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*own, *names})

    return __getattr__, __dir__
