"""Packages that register methods and losses into the lower layers' registries, found by entry point.

The registries of :mod:`rsretrieval.methods` and :mod:`rsretrieval.training` know nothing of what
sits above them: a package that adds a method or a loss (``rsretrieval.cmer``, or your own) is named
in its distribution's metadata, entry-point group ``rsretrieval.plugins``, and registers itself when
imported. The registries call :func:`load_plugins` before they answer a lookup::

    [project.entry-points."rsretrieval.plugins"]
    my_methods = "my_package.methods"
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

GROUP = "rsretrieval.plugins"
_logger = logging.getLogger(__name__)
_state = {"loaded": False}


def load_plugins() -> list[str]:
    """Import every module of the ``rsretrieval.plugins`` entry points once; returns their names.

    An entry point that fails to import is logged and skipped, so one broken plugin does not take the
    registries down with it."""
    if _state["loaded"]:
        return []
    _state["loaded"] = True  # before importing: a plugin's own lookups must not come back here
    names = []
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        try:
            importlib.import_module(point.value.split(":", 1)[0])
        except Exception as exc:  # noqa: BLE001  a plugin's bug is reported, not raised into every lookup
            _logger.warning("rsretrieval plugin %s (%s) could not be imported: %s", point.name, point.value, exc)
            continue
        names.append(point.name)
    if not names:
        _logger.warning("no rsretrieval plugin is installed (entry-point group %s): CMER's methods and losses "
                        "are missing; install the package (pip install -e .)", GROUP)
    return names
