"""Evaluation split across the processes of a distributed run (``accelerate launch``): each process scores every
world-th item and the results are gathered back, in order, on every process, so the metrics computed from them are
the single-process metrics and every process holds them. Without torch.distributed (one process) it is a plain call."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes); (0, 1) outside a distributed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def sharded(fn: Callable[[list], Sequence], items: Sequence) -> list:
    """``fn(items)`` (a list of results, one per item, in order), each process computing the results of its shard."""
    rank, size = world()
    if size == 1:
        return list(fn(list(items)))
    mine = [items[i] for i in range(rank, len(items), size)]
    part = list(fn(mine)) if mine else []
    parts: list = [None] * size
    torch.distributed.all_gather_object(parts, part)
    out: list = [None] * len(items)
    for r, results in enumerate(parts):
        out[r::size] = results
    return out
