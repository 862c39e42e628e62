"""The mixing algorithms by name: what a job's ``algorithm`` names and ``make_algorithm`` builds.

A module of its own, above the algorithms it lists: they import the shared helpers of
``base.py``, and nothing below imports this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mixplane.adapt.ado import ADO, ado_mixtera
from mixplane.adapt.base import LossProportional, MixingAlgorithm
from mixplane.adapt.odm import ODM
from mixplane.errors import MixplaneError

#: Algorithms by name: a factory from (prior weights, options) to an algorithm.
ALGORITHMS: dict[str, Callable[..., MixingAlgorithm]] = {
    "ado": ADO,  # mixplane/adapt/ado.py, docs/adaptation.md
    "ado-mixtera": ado_mixtera,  # ADO as the public Mixtera code computes it
    "odm": ODM,  # mixplane/adapt/odm.py
    "loss-proportional": LossProportional,
}


def make_algorithm(name: str, prior: np.ndarray, **options: Any) -> MixingAlgorithm:
    try:
        factory = ALGORITHMS[name]
    except KeyError:
        msg = f"unknown mixing algorithm {name!r}; known: {sorted(ALGORITHMS)}"
        raise MixplaneError(msg) from None
    try:
        return factory(prior, **options)
    except TypeError as exc:
        msg = f"bad options for mixing algorithm {name!r}: {exc}; see its documentation"
        raise MixplaneError(msg) from None
