"""Mixtures: which share of the budget each component gets.

A mixture maps *selectors* (partial assignments of property values, ``language=en`` or
``language=en,source=web``) to weights. Kinds: static (``Mixture.static``), hierarchical (nested
weights, flattened to products), uniform and inferred (natural proportions) over the values of
some properties, all pure values. ``resolve`` turns a mixture into one weight per component of a
query result: each component must match at most one selector (overlap is an error naming both);
a selector's weight is split among the components it matches in proportion to their size
(tokens or samples); components matched by no selector get weight 0.

Selector values are compared in their text form (``true``/``false``, ``null``, ``str(number)``),
the same form ``Component.selector`` prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mixplane.errors import MixtureError, shown
from mixplane.query.result import QueryResult, format_value

Selector = tuple[tuple[str, str], ...]
Kind = Literal["static", "uniform", "inferred"]
TOLERANCE = 1e-6
MAX_DEPTH = 32  # levels of a hierarchical mixture


def parse_selector(text: str | Mapping[str, Any] | Selector) -> Selector:
    """``"language=en,source=web"`` or ``{"language": "en"}`` -> ``(("language","en"), ...)``;
    an already parsed selector is returned as it is."""
    if isinstance(text, tuple):
        return text
    if isinstance(text, Mapping):
        pairs = [(str(k), format_value(v)) for k, v in text.items()]
        bad = [v for _, v in pairs if "," in v or "=" in v]
        if bad:
            msg = f"selector values {bad} contain ',' or '=', which selector text cannot hold"
            raise MixtureError(msg)
    else:
        pairs = []
        for part in (p.strip() for p in text.split(",")):
            prop, sep, value = part.partition("=")
            if not sep or not prop.strip() or not value.strip():
                msg = (
                    f"invalid selector {text!r}; write PROP=VALUE[,PROP=VALUE], e.g. 'language=en'"
                )
                raise MixtureError(msg)
            pairs.append((prop.strip(), value.strip()))
    props = [p for p, _ in pairs]
    if len(set(props)) != len(props):
        msg = f"selector {text!r} names a property twice"
        raise MixtureError(msg)
    if not pairs:
        msg = "empty selector; name at least one PROP=VALUE"
        raise MixtureError(msg)
    return tuple(pairs)


def selector_text(selector: Selector) -> str:
    return ",".join(f"{p}={v}" for p, v in selector)


@dataclass(frozen=True, slots=True, kw_only=True)
class Mixture:
    """Selectors with weights (static), or a rule over properties (uniform, inferred)."""

    kind: Kind = "static"
    weights: tuple[tuple[Selector, float], ...] = ()
    by: tuple[str, ...] = ()  # for uniform and inferred: the properties whose values are mixed
    allow_empty: bool = False

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def static(
        cls,
        weights: Mapping[str, float] | Sequence[tuple[Any, float]],
        *,
        normalize: bool = False,
        allow_empty: bool = False,
    ) -> Mixture:
        items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        if not items:
            msg = "a static mixture needs at least one selector"
            raise MixtureError(msg)
        parsed = [(parse_selector(s), float(w)) for s, w in items]
        for sel, w in parsed:
            if not math.isfinite(w) or w < 0:
                msg = f"weight of {selector_text(sel)!r} is {w}; weights must be finite and >= 0"
                raise MixtureError(msg)
        seen: set[Selector] = set()
        for sel, _ in parsed:
            key = tuple(sorted(sel))
            if key in seen:
                msg = f"selector {selector_text(sel)!r} appears twice"
                raise MixtureError(msg)
            seen.add(key)
        total = sum(w for _, w in parsed)
        if total <= 0:
            msg = "mixture weights sum to 0; give at least one positive weight"
            raise MixtureError(msg)
        if abs(total - 1.0) > TOLERANCE:
            if not normalize:
                msg = f"mixture weights sum to {total:.9g}, not 1; fix them or pass normalize=True"
                raise MixtureError(msg)
            parsed = [(s, w / total) for s, w in parsed]
        return cls(kind="static", weights=tuple(parsed), allow_empty=allow_empty)

    @classmethod
    def hierarchical(
        cls, tree: Mapping[str, Any], *, normalize: bool = False, allow_empty: bool = False
    ) -> Mixture:
        """Nested weights: ``{"language=en": {"weight": 0.7, "children": {"source=web": 0.5,
        "source=wiki": 0.5}}, "language=de": 0.3}``; children weights are relative to the parent."""
        flat: list[tuple[Selector, float]] = []

        def walk(node: Mapping[str, Any], prefix: Selector, scale: float) -> None:
            if len(prefix) > MAX_DEPTH:
                msg = f"the mixture is nested more than {MAX_DEPTH} levels deep"
                raise MixtureError(msg)
            _check_object(
                node, f"the children of {selector_text(prefix)!r}" if prefix else "a mixture"
            )
            total = sum(_weight(v) for v in node.values())
            if abs(total - 1.0) > TOLERANCE and not normalize:
                msg = (
                    f"weights under {selector_text(prefix) or 'the root'!r} sum to {total:.9g}, "
                    "not 1; fix them or pass normalize=True"
                )
                raise MixtureError(msg)
            for text, value in node.items():
                sel = prefix + parse_selector(text)
                w = scale * _weight(value) / (total if normalize and total > 0 else 1.0)
                children = value.get("children") if isinstance(value, Mapping) else None
                if children:
                    walk(children, sel, w)
                else:
                    flat.append((sel, w))

        walk(tree, (), 1.0)
        return cls.static(flat, normalize=normalize, allow_empty=allow_empty)

    @classmethod
    def uniform(cls, by: Sequence[str]) -> Mixture:
        """Equal weight for every combination of values of ``by`` in the query result."""
        return cls(kind="uniform", by=_by(by))

    @classmethod
    def inferred(cls, by: Sequence[str]) -> Mixture:
        """The natural proportions (tokens, or samples) of the query result grouped by ``by``."""
        return cls(kind="inferred", by=_by(by))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, normalize: bool = False) -> Mixture:
        """A mixture from its JSON form: a flat ``{selector: weight}``, a nested tree, or
        ``{"uniform": [props]}`` / ``{"inferred": [props]}``. Anything else (another type, a
        key that is not text) is a ``MixtureError`` naming what was found."""
        _check_object(data, "a mixture")
        if set(data) == {"uniform"}:
            return cls.uniform(data["uniform"])
        if set(data) == {"inferred"}:
            return cls.inferred(data["inferred"])
        if set(data) == {"weights", "allow_empty"}:
            if not isinstance(data["allow_empty"], bool):
                msg = f"allow_empty must be true or false, got {shown(data['allow_empty'])}"
                raise MixtureError(msg)
            inner = cls.from_json(data["weights"], normalize=normalize)
            return cls(
                kind=inner.kind,
                weights=inner.weights,
                by=inner.by,
                allow_empty=bool(data["allow_empty"]),
            )
        if any(isinstance(v, Mapping) for v in data.values()):
            return cls.hierarchical(data, normalize=normalize)
        return cls.static({str(k): _number(k, v) for k, v in data.items()}, normalize=normalize)

    # -- use ---------------------------------------------------------------------------------
    @property
    def properties(self) -> tuple[str, ...]:
        """The grouping properties this mixture needs, in first-use order."""
        if self.kind != "static":
            return self.by
        out: list[str] = []
        for sel, _ in self.weights:
            out.extend(p for p, _ in sel if p not in out)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        if self.kind != "static":
            return {self.kind: list(self.by)}
        weights = {selector_text(s): w for s, w in self.weights}
        return {"weights": weights, "allow_empty": True} if self.allow_empty else weights

    def resolve(self, result: QueryResult, sizes: np.ndarray) -> np.ndarray:
        """One weight per component of ``result`` (summing to 1); ``sizes`` are the components'
        natural sizes (tokens or samples), used by inferred mixtures and to split a selector's
        weight among the components it matches."""
        sizes = np.asarray(sizes, dtype=np.float64)
        n = len(result.components)
        missing = [p for p in self.by if p not in result.by]
        if missing:
            msg = (
                f"the mixture mixes over {missing}, which the query does not group by; "
                f"group by {sorted(set(result.by) | set(missing))}"
            )
            raise MixtureError(msg)
        if self.kind == "uniform":
            groups = [
                tuple(format_value(c.properties.get(p)) for p in self.by) for c in result.components
            ]
            weights = np.zeros(n)
            for key in set(groups):
                match = np.array([g == key for g in groups]) & (sizes > 0)
                if match.any():
                    weights[match] = sizes[match] / sizes[match].sum()
        elif self.kind == "inferred":
            weights = sizes.copy()
        else:
            weights = self._static_weights(result, sizes)
        total = weights.sum()
        if n == 0 or total <= 0:
            msg = (
                "the mixture selects no samples of the query result; check the filter and selectors"
            )
            raise MixtureError(msg)
        return weights / total

    def _static_weights(self, result: QueryResult, sizes: np.ndarray) -> np.ndarray:
        known = set(result.by)
        texts = [{p: format_value(v) for p, v in c.properties.items()} for c in result.components]
        owner = np.full(len(texts), -1)
        weights = np.zeros(len(texts))
        for i, (sel, w) in enumerate(self.weights):
            unknown = [p for p, _ in sel if p not in known]
            if unknown:
                msg = (
                    f"selector {selector_text(sel)!r} names {unknown}, which the query does not "
                    f"group by; group by {sorted(known | set(unknown))}"
                )
                raise MixtureError(msg)
            match = np.array([all(t[p] == v for p, v in sel) for t in texts], dtype=bool)
            clash = match & (owner >= 0)
            if clash.any():
                other = self.weights[int(owner[np.flatnonzero(clash)[0]])][0]
                comp = result.components[int(np.flatnonzero(clash)[0])].selector
                msg = (
                    f"selectors {selector_text(other)!r} and {selector_text(sel)!r} overlap on "
                    f"component {comp}; make them disjoint"
                )
                raise MixtureError(msg)
            owner[match] = i
            matched_size = sizes[match].sum()
            if not match.any() or matched_size <= 0:
                if w > 0 and not self.allow_empty:
                    msg = (
                        f"selector {selector_text(sel)!r} matches 0 samples; remove it or pass "
                        "allow_empty=True"
                    )
                    raise MixtureError(msg)
                continue
            weights[match] = w * sizes[match] / matched_size
        return weights


def _check_object(data: Any, what: str) -> None:
    if not isinstance(data, Mapping):
        msg = (
            f"{what} must be a JSON object mapping selectors to weights, e.g. "
            f'{{"language=en": 0.7, "language=de": 0.3}}; got {type(data).__name__}'
        )
        raise MixtureError(msg)
    keys = [k for k in data if not isinstance(k, str)]
    if keys:
        msg = f"selectors are text such as 'language=en'; {what} has keys {shown(keys[:3])}"
        raise MixtureError(msg)


def _weight(value: Any) -> float:
    if isinstance(value, Mapping):
        return _number("weight", value.get("weight", 0.0))
    return _number("weight", value)


def _number(name: Any, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"weight of {shown(name)} must be a number, got {shown(value)}"
        raise MixtureError(msg)
    return float(value)


def _by(by: Sequence[str]) -> tuple[str, ...]:
    if isinstance(by, str):
        by = [p.strip() for p in by.split(",") if p.strip()]
    if not isinstance(by, Sequence) or not all(isinstance(p, str) and p for p in by):
        msg = f"name the properties to mix over as a list of names, got {shown(by)}"
        raise MixtureError(msg)
    if not by:
        msg = "name at least one property to mix over"
        raise MixtureError(msg)
    return tuple(by)
