"""A job's components: its query result, each component's seeded order and token sizes.

Built from an open catalog, or from a ``JobSnapshot`` (another process, no catalog): both answer
the same queries (the snapshot holds the results, token sizes and pointers the catalog gave). A
component's token sizes follow one rule wherever the job runs (``_token_sizes``); how each was
sized is kept (``sizing``) and saved in the job's state, so every process and every restore
plans with the same numbers. A bytes-per-token ratio measured with the tokenizer (64 samples a
component: for the peers corpus ~460,000 tokens, 1-2 s with the tokenizer's parse) is measured
when the orders are first needed, not when the job is made (``pending``): a restore takes the
ratios its state records instead (``take_sizing``), as it always planned with them. Extensions
(files registered after the job started) add components; they are recorded so a restore
rebuilds the same ones.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from mixplane.catalog.catalog import Catalog
from mixplane.catalog.pretokenized import check_job
from mixplane.chunking.order import ComponentOrder, OrderKind, generator, key_of
from mixplane.client.snapshot import JobSnapshot
from mixplane.errors import PlanError, StateError
from mixplane.job.spec import JobSpec
from mixplane.job.state import ComponentSizing
from mixplane.job.warn import warn_once
from mixplane.query.result import QueryResult, combine
from mixplane.tokens.tokenizer import Tokenizer

PURPOSE_RATIO = 4  # generator purpose of the samples a bytes-per-token ratio is measured on
RATIO_SAMPLES = 64  # samples of a component a ratio is measured on
#: what ``Components.build`` and ``add`` replace (``restore`` puts it back when it fails)
BUILT = (
    "given_sizing",
    "_sizing",
    "results",
    "result",
    "_orders",
    "_counts",
    "_lengths",
    "pending",
)


class Components:
    """The components of one job (see the module)."""

    def __init__(
        self,
        spec: JobSpec,
        *,
        catalog: Catalog | None,
        snapshot: JobSnapshot | None,
        tokenizer: Tokenizer | None,
        sizing: Mapping[str, ComponentSizing] | Literal["fixed"] | None,
    ) -> None:
        if catalog is None and snapshot is None:
            msg = "a job needs an open catalog or a job snapshot"
            raise PlanError(msg)
        if spec.order == "sorted" and spec.sort_by is None:
            msg = "order='sorted' needs sort_by=PROPERTY"
            raise PlanError(msg)
        self.spec = spec
        self._catalog = catalog
        self.snapshot = snapshot
        self.tokenizer = tokenizer
        self.phases = spec.phases
        self.by: list[str] = []
        for phase in self.phases:
            self.by += [p for p in phase.mixture.properties if p not in self.by]
        #: how each component's token sizes were made (token jobs), by component key; given
        #: (``sizing=``, a saved state, a snapshot) or measured once, when first needed
        self._sizing: dict[str, ComponentSizing] = {}
        #: sizing given (by component key), or "fixed": every component at the spec's ratio
        self.given_sizing: dict[str, ComponentSizing] | Literal["fixed"] = (
            sizing if sizing == "fixed" else dict(sizing or {})
        )
        self.results: list[QueryResult] = []
        self.result: QueryResult
        self._orders: list[ComponentOrder] | None = None
        self._lock = threading.Lock()  # sizing the orders (a reader may ask without the job's)
        #: catalog answers per component (by its runs, held in ``results``) of this build:
        #: token counts, byte lengths
        self._counts: dict[int, np.ndarray | None] = {}
        self._lengths: dict[int, np.ndarray] = {}
        #: whether sizing the orders needs a ratio measured with the tokenizer (not done yet)
        self.pending = False
        self.extensions: list[dict[str, Any]] = []

    def build(self, *, exclude_files: Sequence[int] = ()) -> None:
        """The job's own components (files added by extensions left out), sized afresh: now,
        unless a component needs a ratio measured with the tokenizer (``pending``; then when
        the orders are first needed). What cannot be sized raises here either way."""
        self._sizing = {}
        self._counts, self._lengths = {}, {}
        self.results = [self.query(exclude_files=exclude_files)]
        self._check_tokens(self.results[0])
        self.result = combine(self.results)
        self._orders = None
        own = self.result.components
        tokens = self.spec.unit == "tokens"
        sized = [self._sizes(c.selector, c.runs, measure=False) if tokens else None for c in own]
        self.pending = tokens and any(s is None for s in sized)
        if not self.pending:
            self._orders = [
                self._order(c.selector, c.runs, 0, s) for c, s in zip(own, sized, strict=True)
            ]

    @property
    def orders(self) -> list[ComponentOrder]:
        """Each component's seeded order with its token sizes (sized on first use)."""
        orders = self._orders
        if orders is None:
            with self._lock:
                if self._orders is None:
                    self._sizing = {}
                    own = self.results[0].components
                    self._orders = [self._order(c.selector, c.runs, 0) for c in own]
                    self.pending = False
                orders = self._orders
        return orders

    @property
    def sizing(self) -> dict[str, ComponentSizing]:
        """How each component's token sizes were made, by key (sizes the orders if need be)."""
        _ = self.orders
        return self._sizing

    @property
    def count(self) -> int:
        """How many components (without sizing them)."""
        return len(self.result.components)

    def take_sizing(self, sizing: Mapping[str, ComponentSizing]) -> None:
        """Size as a saved state did, before anything was measured: the components it names
        at its sizing, the others as ``build`` would. A restore plans with the state's sizing
        in any case (``restore``); taking it first spares measuring ratios it already holds.
        A job sized already, or given ``sizing="fixed"``, is left as it is."""
        if self._orders is None and self.given_sizing != "fixed":
            self.given_sizing = dict(sizing)

    def add(self, result: QueryResult) -> list[ComponentOrder]:
        """Append an extension's components; returns their orders."""
        generation = len(self.results)
        self._check_tokens(result)
        own = self.orders  # the job's own components sized first
        self.results.append(result)
        self.result = combine(self.results)
        orders = [self._order(c.selector, c.runs, generation) for c in result.components]
        own += orders
        return orders

    def _check_tokens(self, result: QueryResult) -> None:
        """Token ids need the job's tokenizer (``catalog.pretokenized.check_job``)."""
        rows = self.snapshot.file_rows if self.snapshot is not None else self.catalog().files()
        ids = {int(f) for f in result.runs.column("file_id").to_pylist()}
        check_job(rows, ids, self.spec.tokenizer, unit=self.spec.unit)

    def use_tokenizer(self, tokenizer: Tokenizer, *, untouched: bool) -> bool:
        """Size a token job made without a tokenizer with ``tokenizer`` (its stream's), if
        the job is ``untouched`` (nothing planned, consumed or changed) and was not given a
        sizing; returns whether it was resized (the job then resets its plan). Otherwise a
        ``SizingWarning`` once says why its shares may miss and what to do."""
        spec = self.spec
        if spec.unit != "tokens":
            warn_once(
                f"job {spec.job_id!r} is budgeted in samples and streamed as tokens: its token "
                "shares are not controlled; submit it with unit='tokens' (the default) and the "
                "tokenizer"
            )
            return False
        if spec.tokenizer == tokenizer.fingerprint:
            return False
        if spec.tokenizer is not None or self.snapshot is not None or self.given_sizing:
            untouched = False
        if not untouched or self.extensions:
            sized = "a fixed ratio" if spec.tokenizer is None else f"tokenizer {spec.tokenizer}"
            warn_once(
                f"job {spec.job_id!r} was sized with {sized} and is streamed with tokenizer "
                f"{tokenizer.fingerprint}: its token shares follow the former; submit the job "
                "with the stream's tokenizer"
            )
            return False
        self.spec = dataclasses.replace(spec, tokenizer=tokenizer.fingerprint)
        self.tokenizer = tokenizer
        self.build()
        return True

    def restore(
        self, state: Mapping[str, Any], *, resize: bool
    ) -> list[list[ComponentOrder]] | None:
        """Rebuild the components as a saved state had them, if they differ: its sizing (when
        ``resize``; e.g. counts were made since the run started) and its extensions. Returns
        the orders each extension added (in order), or None when nothing was rebuilt."""
        saved_sizing = state.get("sizing")
        resized = resize and saved_sizing is not None and saved_sizing != self.sizing
        extensions = state["extensions"]
        if not (extensions or self.extensions or resized):
            return None
        kept = {name: getattr(self, name) for name in BUILT}
        try:
            if resized:
                self.given_sizing = dict(saved_sizing or {})
            added = sorted({f for ext in extensions for f in ext["files"]})
            self.build(exclude_files=added)
            orders = [self.add(self.query(include_files=ext["files"])) for ext in extensions]
        except BaseException:
            # a state that cannot be built (a corrupt sizing, files it names): the components
            # stay as built, so that what is sized when first needed is sized as before
            for name, value in kept.items():
                setattr(self, name, value)
            raise
        self.extensions = [dict(e) for e in extensions]
        return orders

    def files(self) -> list[int]:
        """The ids of the files the job's components read."""
        return sorted({int(f) for r in self.results for f in r.runs.column("file_id").to_pylist()})

    def snapshot_data(
        self,
    ) -> tuple[tuple[QueryResult, ...], dict[str, np.ndarray | None], pa.Table, dict[int, Any]]:
        """What a snapshot holds of the catalog: the query results, token sizes, file rows and
        sample pointers of the files the components read."""
        sizes = {o.key: o.sizes for o in self.orders}
        if self.snapshot is not None:
            old = self.snapshot
            return tuple(self.results), sizes, old.file_rows, old.file_pointers
        catalog = self.catalog()
        files = self.files()
        rows = catalog.files()
        keep = np.isin(rows.column("file_id").to_numpy(), np.asarray(files, dtype=np.int64))
        pointers = {f: catalog.pointers(f) for f in files}
        return tuple(self.results), sizes, rows.filter(keep), pointers

    def query(
        self, *, exclude_files: Sequence[int] = (), include_files: Sequence[int] | None = None
    ) -> QueryResult:
        """The components of the job's filters (all phases), grouped by the mixtures'
        properties; from the snapshot when there is no catalog."""
        if self.snapshot is not None:
            return self._snapshot_result(include_files)
        filters = [p.where for p in self.phases]
        members: list[str | None] = filters if len(filters) > 1 else []
        where = (
            None
            if any(f is None for f in filters)
            else (" or ".join(f"({f})" for f in filters) if len(filters) > 1 else filters[0])
        )
        return self.catalog().components(
            where,
            by=self.by,
            sort_by=self.spec.sort_by if self.spec.order == "sorted" else None,
            descending=self.spec.descending,
            members=members,
            exclude_files=exclude_files,
            include_files=include_files,
        )

    def _snapshot_result(self, include_files: Sequence[int] | None) -> QueryResult:
        """The snapshot's answer to a query: the base result, or an extension's."""
        assert self.snapshot is not None
        if include_files is None:
            return self.snapshot.results[0]
        for g, ext in enumerate(self.snapshot.state["extensions"], start=1):
            if sorted(ext["files"]) == sorted(include_files):
                return self.snapshot.results[g]
        msg = (
            "the state names files added to the job after this snapshot was taken; take a new "
            "snapshot (job.snapshot()) where the catalog is open"
        )
        raise StateError(msg)

    def catalog(self) -> Catalog:
        if self._catalog is None:
            msg = (
                "this job runs from a snapshot, without the catalog; extend it or look for new "
                "files where the catalog is open, then take a new snapshot"
            )
            raise PlanError(msg)
        return self._catalog

    def _order(
        self,
        selector: str,
        runs: Any,
        generation: int,
        sized: tuple[ComponentSizing, np.ndarray] | None = None,
    ) -> ComponentOrder:
        key = selector if generation == 0 else f"{selector}#{generation}"
        sizes = None
        if self.spec.unit == "tokens":
            sizing, sizes = sized or self._token_sizes(key, runs)
            self._sizing[key] = sizing
        kind: OrderKind = "shuffled" if self.spec.order == "shuffled" else "as-stored"
        return ComponentOrder(
            key=key,
            files=runs.column("file_id").to_numpy().astype(np.int32),
            starts=runs.column("start").to_numpy(),
            counts=runs.column("count").to_numpy(),
            seed=self.spec.seed,
            kind=kind,
            block_size=self.spec.block_size,
            sizes=sizes,
        )

    def _token_sizes(self, key: str, runs: Any) -> tuple[ComponentSizing, np.ndarray]:
        sized = self._sizes(key, runs, measure=True)
        assert sized is not None
        return sized

    def _sizes(
        self, key: str, runs: Any, *, measure: bool
    ) -> tuple[ComponentSizing, np.ndarray] | None:
        """How a component is sized and its per-sample tokens, by one rule wherever the job
        runs (in-process, on the server, in a snapshot): the sizing the job was given or saved
        with; else exact counts for the job's tokenizer where the catalog has them; else byte
        lengths over a bytes-per-token ratio measured with the tokenizer on a seeded sample of
        the component (``RATIO_SAMPLES``; None when that is needed and not ``measure``); else,
        for a job that names no tokenizer, over ``bytes_per_token``. A job that names a
        tokenizer it was not given and has no counts for is refused: a fixed ratio would
        silently plan other data than where the tokenizer is known."""
        if self.snapshot is not None:
            sizes = self.snapshot.sizes.get(key)
            if sizes is None:
                msg = f"the job snapshot has no token sizes for component {key!r}; take it again"
                raise StateError(msg)
            saved = self.snapshot.state.get("sizing") or {}
            source = self.snapshot.token_source.get(key, "bytes")
            sizing = saved.get(key) or ComponentSizing(
                source=source,  # type: ignore[typeddict-item]
                bytes_per_token=None if source == "exact" else self.spec.bytes_per_token,
            )
            return sizing, sizes
        given = (
            ComponentSizing(source="bytes", bytes_per_token=self.spec.bytes_per_token)
            if self.given_sizing == "fixed"
            else self.given_sizing.get(key)
        )
        if given is not None:
            return given, self._sized(key, runs, given)
        if self.spec.tokenizer is not None:
            exact = self._exact(runs)
            if exact is not None:
                return ComponentSizing(source="exact", bytes_per_token=None), np.maximum(exact, 1)
            if self.tokenizer is None:
                msg = (
                    f"cannot size job {self.spec.job_id!r} in tokens: the catalog has no token "
                    f"counts of its tokenizer ({self.spec.tokenizer}) for component {key!r}, and "
                    "the tokenizer itself was not given; pass it (submit(tokenizer=...)) or count "
                    "the tokens first (mixplane count-tokens --tokenizer ...)"
                )
                raise PlanError(msg)
        sizing = ComponentSizing(source="bytes", bytes_per_token=self.spec.bytes_per_token)
        raw = self._bytes(runs)
        if self.tokenizer is not None and len(raw):
            if not measure:
                return None
            rng = generator(self.spec.seed, PURPOSE_RATIO, key_of(key))
            picks = np.sort(rng.choice(len(raw), size=min(RATIO_SAMPLES, len(raw)), replace=False))
            texts = self.catalog().sample_texts(runs, picks)
            tokens = int(self.tokenizer.count_batch(texts).sum())
            nbytes = sum(len(t.encode()) for t in texts)
            if tokens > 0 and nbytes > 0:
                sizing = ComponentSizing(source="sampled", bytes_per_token=nbytes / tokens)
        return sizing, self._sized(key, runs, sizing)

    def _exact(self, runs: Any) -> np.ndarray | None:
        """The catalog's token counts of the job's tokenizer for a component's runs (asked
        once a build; by the runs, not the key: phases' components may share a selector)."""
        if id(runs) not in self._counts:
            tokenizer = self.spec.tokenizer
            found = self.catalog().sample_tokens(runs, tokenizer) if tokenizer is not None else None
            self._counts[id(runs)] = found
        return self._counts[id(runs)]

    def _bytes(self, runs: Any) -> np.ndarray:
        """The byte lengths of a component's runs' samples (asked once a build)."""
        if id(runs) not in self._lengths:
            self._lengths[id(runs)] = self.catalog().sample_bytes(runs)
        return self._lengths[id(runs)]

    def _sized(self, key: str, runs: Any, sizing: ComponentSizing) -> np.ndarray:
        """Per-sample tokens of a component by a given sizing."""
        if sizing["source"] == "exact":
            exact = self._exact(runs)
            if exact is None:
                msg = (
                    f"job {self.spec.job_id!r} was sized with exact token counts for component "
                    f"{key!r}, which the catalog no longer holds for tokenizer "
                    f"{self.spec.tokenizer}; count them again (mixplane count-tokens)"
                )
                raise StateError(msg)
            return np.maximum(exact, 1)
        ratio = sizing["bytes_per_token"]
        if ratio is None or not ratio > 0:
            msg = f"invalid sizing for component {key!r}: {sizing!r}"
            raise StateError(msg)
        return np.maximum(np.ceil(self._bytes(runs) / ratio), 1).astype(np.int64)

    @property
    def token_source(self) -> dict[str, str]:
        """Each component's sizing source (exact | sampled | bytes), by component key."""
        return {key: sizing["source"] for key, sizing in self.sizing.items()}

    @property
    def sizing_note(self) -> str | None:
        """Why the job's token shares cannot meet the documented accuracy, and the fix; None
        when they can (exact counts or ratios measured with the tokenizer)."""
        fixed = sorted(k for k, s in self.sizing.items() if s["source"] == "bytes")
        if self.spec.unit != "tokens" or not fixed:
            return None
        return (
            f"job {self.spec.job_id!r} sizes {len(fixed)} of {len(self.sizing)} components at a "
            f"fixed {self.spec.bytes_per_token} bytes per token (no token counts, no tokenizer "
            "given): its token shares can miss their targets by several points; pass the "
            "tokenizer that will tokenize the stream (submit(tokenizer=...)) or count tokens "
            "first (mixplane count-tokens)"
        )

    def natural(self) -> np.ndarray:
        """Each component's size in the job's unit (tokens, or samples): a selector's weight is
        split among the components it names in proportion to it, in phases and in
        ``set_weights`` alike."""
        return np.array(
            [o.sizes.sum() if o.sizes is not None else o.total for o in self.orders],
            dtype=np.float64,
        )

    def weights(self, phase: int, *, natural: np.ndarray | None = None) -> np.ndarray:
        """The phase's mixture resolved over the components that pass its filter (``natural``:
        other sizes than the components', e.g. to check the mixture before sizing)."""
        natural = self.natural() if natural is None else natural
        if len(self.phases) > 1:
            natural *= np.array([c.memberships[phase] for c in self.result.components], dtype=bool)
        return self.phases[phase].mixture.resolve(self.result, natural)
