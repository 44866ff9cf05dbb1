"""Progress bars for long loops, only when the caller asks (the CLI and tools do)."""

from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def bar(items: Iterable[T], enabled: bool = False, desc: str = "", total: int | None = None
        ) -> Iterable[T]:
    """`items` wrapped in a tqdm bar when enabled, else unchanged, so library code stays quiet."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, leave=False)


def say(message: str, enabled: bool = False) -> None:
    """Print a result line above any open bar (to stderr) when progress is enabled."""
    if enabled:
        import sys

        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
