"""Optional dependencies of plugins: declared up front, so a missing one skips the plugin cleanly."""

from __future__ import annotations

import importlib.util


class MissingDependency(ImportError):
    """A plugin's optional package is not installed; the loader skips the plugin and says how to get it."""

    def __init__(self, module: str, install: str) -> None:
        super().__init__(f"needs the {module!r} package: {install}", name=module)
        self.module = module
        self.install = install


def needs(*modules: str, install: str) -> None:
    """Raise :class:`MissingDependency` unless every module in ``modules`` can be imported.

    Call it at the top of a plugin's ``__init__`` (before importing the packages), e.g.
    ``needs("redis", install="pip install 'oblix[redis]'")``. It only looks the modules
    up (nothing is imported), so it is cheap.
    """
    for module in modules:
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise MissingDependency(module, install)
