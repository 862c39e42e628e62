"""Adaptive mixing: algorithms that turn per-component loss feedback into new weights."""

from mixplane.adapt.base import ALGORITHMS, LossProportional, MixingAlgorithm, make_algorithm

__all__ = ["ALGORITHMS", "LossProportional", "MixingAlgorithm", "make_algorithm"]
