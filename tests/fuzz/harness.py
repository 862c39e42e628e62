"""The fuzz campaign's shared parts: seeds, mutators and the checks every outcome must pass.

Inputs are generated from one seed (``MIXPLANE_FUZZ_SEED``, default 13) and a label per input,
so a failure names the input and reruns exactly (``MIXPLANE_FUZZ_SEED=... pytest tests/fuzz``
explores other inputs; ``MIXPLANE_FUZZ_SCALE=10`` runs ten times as many).

Mutators:

- bytes (any file or body): ``cut`` (truncate anywhere), ``flip`` (1-8 bit flips), ``splice``
  (random bytes inserted), ``zero`` (a run overwritten with NUL), ``garbage`` (random bytes of
  the same length);
- values (a decoded JSON document or record): ``mistype`` replaces, drops or adds one node deep
  in the tree with a value of another type (``ODD_VALUES``: NaN, huge numbers, NUL, quotes,
  deep nesting, ...).

Every outcome is checked the same way: in-process a ``MixplaneError`` whose message is one line
(``one_line``), for the CLI exit status 1 and one ``error:`` line, over HTTP a 4xx with
``{"error": text}``; anything else fails with the input's label.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

SEED = int(os.environ.get("MIXPLANE_FUZZ_SEED", "13"))
SCALE = float(os.environ.get("MIXPLANE_FUZZ_SCALE", "1"))

#: Inputs each part of the campaign generates at least (scaled); they sum to 500 or more.
MIN_INPUTS = {"files": 200, "documents": 120, "states": 100, "http": 220}


def count(part: str) -> int:
    """How many inputs ``part`` generates in this run."""
    return max(1, round(MIN_INPUTS[part] * SCALE))


def rng_for(*label: object) -> random.Random:
    """The generator of one input: a pure function of the seed and the input's label."""
    return random.Random(":".join(map(str, (SEED, *label))))


# -- bytes --------------------------------------------------------------------------------------


def cut(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def flip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def splice(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]


def zero(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    n = min(rng.randint(1, 600), len(data) - at)
    return data[:at] + bytes(n) + data[at + n :]


def garbage(data: bytes, rng: random.Random) -> bytes:
    return rng.randbytes(max(len(data), 1))


BYTE_MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "cut": cut,
    "flip": flip,
    "splice": splice,
    "zero": zero,
    "garbage": garbage,
}


# -- values -------------------------------------------------------------------------------------


def _deep(depth: int) -> Any:
    node: Any = "x"
    for _ in range(depth):
        node = [node]
    return node


#: Values of every JSON type and the awkward corners of each.
ODD_VALUES: list[Callable[[random.Random], Any]] = [
    lambda r: None,
    lambda r: True,
    lambda r: 0,
    lambda r: -1,
    lambda r: r.choice([2**63, -(2**63) - 1, 2**64, 10**40]),
    lambda r: r.choice([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324]),
    lambda r: "",
    lambda r: r.choice(["x" * r.randint(1000, 100_000), "\x00", "a\x00b", "'); --", '"', "é字"]),
    lambda r: r.choice([[], [1, "a", None], [[[]]]]),
    lambda r: r.choice([{}, {"": None}, {"a": {"b": {}}}]),
    lambda r: _deep(r.choice([50, 400])),  # deeper only as raw text (json.dumps recurses)
    lambda r: r.choice(["language=en", "=", ",", "language=", "a=b=c"]),
]


def odd_value(rng: random.Random) -> Any:
    return rng.choice(ODD_VALUES)(rng)


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:50]):
            out += _nodes(v, (*path, i))
    return out


def mistype(value: Any, rng: random.Random) -> Any:
    """A copy of ``value`` with one node replaced by an odd value, dropped, or given an
    unknown key (for a dict)."""
    value = copy.deepcopy(value)
    path = rng.choice(_nodes(value))
    if not path:
        return odd_value(rng)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    action = rng.random()
    if action < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action < 0.25 and isinstance(parent, dict):
        parent[rng.choice(["unknown", "", "x" * 300, "\x00"])] = odd_value(rng)
    else:
        parent[path[-1]] = odd_value(rng)
    return value


# -- outcomes -----------------------------------------------------------------------------------


def one_line(message: str, label: str) -> None:
    """An error message is one line of readable text (not a traceback)."""
    assert message.strip(), f"{label}: empty error message"
    assert "\n" not in message.strip(), f"{label}: multi-line error message: {message[:2000]!r}"
    assert "Traceback" not in message, f"{label}: traceback in the message: {message[:2000]!r}"


class Tally:
    """Outcomes per kind of input, printed at the end of each part (``pytest -s``)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.outcomes: Counter[tuple[str, str]] = Counter()

    def add(self, kind: str, outcome: str) -> None:
        self.outcomes[(kind, outcome)] += 1

    @property
    def inputs(self) -> int:
        return sum(self.outcomes.values())

    def report(self) -> str:
        lines = [f"fuzz {self.part}: {self.inputs} inputs (seed {SEED})"]
        for (kind, outcome), n in sorted(self.outcomes.items()):
            lines.append(f"  {kind:<24} {outcome:<10} {n}")
        return "\n".join(lines)
