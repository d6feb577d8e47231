"""Training methods behind one small interface (engrain.methods.base.Method); `icl` (nothing
trained) lives in engrain.evaluation. The registry is a plain dict: name -> the method's class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engrain.errors import unknown
from engrain.methods.base import Method, collate, forward_last, token_nll
from engrain.methods.cft import CFT
from engrain.methods.cpt import CPT
from engrain.methods.distill import Distill
from engrain.methods.head import HeadMethod
from engrain.methods.pbft import PBFT

if TYPE_CHECKING:
    from engrain.run import Run

REGISTRY: dict[str, type] = {"pbft": PBFT, "head": HeadMethod, "distill": Distill, "cpt": CPT, "cft": CFT}


def build_method(name: str, run: "Run") -> Method:
    if name not in REGISTRY:
        raise unknown("training method", name, REGISTRY)
    return REGISTRY[name].build(run)


__all__ = ["REGISTRY", "Method", "build_method", "collate", "forward_last", "token_nll"]
