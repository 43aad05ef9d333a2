"""argparse types for the command line: a bad number, port or device is one usage line (exit 2)
before any work starts, never a traceback from deep inside a command."""

from __future__ import annotations

import argparse
import math


def at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum`` (a bad value is a usage error, not a traceback)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}, the least this option takes")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _number(text: str, ok, why: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"{value} {why}" if math.isfinite(value) else f"{text!r} is not a finite number")
    return value


def share(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    return _number(text, lambda v: 0 <= v <= 1, "is not a share from 0 to 1")


def positive(text: str) -> float:
    """An argparse type: a number above 0."""
    return _number(text, lambda v: v > 0, "is not above 0")


def port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    value = at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1 to 65535)")
    return value


def device(text: str) -> str:
    """An argparse type: a device torch can use here (``auto`` always passes), checked before any work starts."""
    from rsretrieval.models import select_device

    try:
        select_device(text)
    except (RuntimeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc).splitlines()[0]) from None
    return text


POSITIVE, NON_NEGATIVE = at_least(1), at_least(0)


def comma_separated(text: str) -> tuple[str, ...]:
    """``"ivf, ivfpq"`` -> ``("ivf", "ivfpq")``: names, empty ones left out (the command checks them)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
