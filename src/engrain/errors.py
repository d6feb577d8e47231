"""User-facing errors: one line a user can act on; the CLI prints it and exits with code 2."""

from __future__ import annotations

import difflib
from typing import Iterable


class EngrainError(Exception):
    """Bad input or an impossible request. The message is the whole story: no traceback needed."""


def unknown(kind: str, name: str, known: Iterable[str]) -> EngrainError:
    """An error for an unknown registry name, with a did-you-mean suggestion."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return EngrainError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}")
