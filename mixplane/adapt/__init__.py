"""Adaptive mixing: algorithms that turn per-component loss feedback into new weights.

``ALGORITHMS`` holds them by name: ``ado`` and ``ado-mixtera`` (``ado.py``), ``odm``
(``odm.py``) and ``loss-proportional`` (``base.py``), in ``registry.py``; ``replay.py`` runs one on a logged
feedback trace without training. docs/adaptation.md describes each with its options.
"""

from mixplane.adapt.ado import ADO, AlgorithmOptionError, fit_scaling_laws
from mixplane.adapt.base import LossProportional, MixingAlgorithm
from mixplane.adapt.odm import ODM
from mixplane.adapt.registry import ALGORITHMS, make_algorithm

__all__ = [
    "ADO",
    "ALGORITHMS",
    "ODM",
    "AlgorithmOptionError",
    "LossProportional",
    "MixingAlgorithm",
    "fit_scaling_laws",
    "make_algorithm",
]
