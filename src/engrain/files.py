"""Writing folders so that an interruption never leaves neither the old one nor the new one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_in(new: Path, target: Path, old: Path) -> None:
    """Replace the folder ``target`` by ``new``: the old one is renamed aside first and restored if the
    second rename fails (a folder cannot be renamed over a non-empty one in one step)."""
    had_old = target.exists()
    if had_old:
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if had_old:
            os.replace(old, target)
        raise
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
