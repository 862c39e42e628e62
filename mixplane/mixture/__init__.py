"""Mixtures and schedules (pure values) and apportionment (pure functions)."""

from mixplane.mixture.apportion import apportion_with_carry, largest_remainder
from mixplane.mixture.mixture import Mixture, parse_selector, selector_text
from mixplane.mixture.schedule import OnExhausted, Phase, ScheduleUnit

__all__ = [
    "Mixture",
    "OnExhausted",
    "Phase",
    "ScheduleUnit",
    "apportion_with_carry",
    "largest_remainder",
    "parse_selector",
    "selector_text",
]
