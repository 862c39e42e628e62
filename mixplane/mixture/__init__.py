"""Mixtures (pure values) and apportionment (pure functions)."""

from mixplane.mixture.apportion import apportion_with_carry, largest_remainder
from mixplane.mixture.mixture import Mixture, parse_selector, selector_text

__all__ = [
    "Mixture",
    "apportion_with_carry",
    "largest_remainder",
    "parse_selector",
    "selector_text",
]
