"""The slimtorch logger and the one progress helper used by every long step."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

logger = logging.getLogger("slimtorch")

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn progress bars off (True) or back on (False) for the whole process."""
    global _quiet
    _quiet = quiet


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, drawing a rich progress bar on a terminal; silent when not a terminal or quiet.

    Args:
        items: any iterable.
        description: the label shown beside the bar.
        total: the number of items when ``len(items)`` is not known.
    """
    if _quiet or not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import track

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    yield from track(items, description=description, total=total, transient=True)
