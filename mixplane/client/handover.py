"""An elastic restore of window streams, exact per token: each old consumer's unyielded stream
is handed to the new consumer that gets its chunk.

A window stream yields, per component, windows cut from one stream of tokens: its packer's carry
at the start of the chunk rest it is in (``B``, at most ``seq_len`` tokens: the rest of
documents from earlier chunks), then the rest's documents of that component (``D``, each with
its EOS, and BOS when asked). After ``n`` windows of a component the first ``n * seq_len`` of
those tokens were inputs; the rest were not. The window stream reports that place to its job
(``Placed``: ``B`` and the windows taken per component; ``WindowPosition`` in a job state),
so a job state knows, per consumer, what its stream still owes.

Restored under another topology (``job.consumers.redeal``), the chunk a consumer stood in is
dealt on as usual (the same chunk rest) with a ``Handover``: per component, the *head* (the
tokens of ``B`` not yet yielded, with their document starts) and how many tokens of ``D`` were
yielded (``skips``). The new consumer's window stream packs that chunk as head, then ``D`` from
``skips`` on (``pack_handover``; the document cut there is a segment of its own), after its own
carry. So every token of the old run is an input exactly once over the two runs, and every
document's tokens arrive in order (a document cut by the stop continues on the new consumer).
A handed-over chunk stopped again is handed over again (``handed_over`` composes: the new head
is the unyielded part of carry + head, at most one ``seq_len`` more per restore).

Sizes: a position and a handover are O(components x seq_len) ints, like the packer state. A
handed-over chunk is re-read and its text tokenized whole (as a resume without ``replay``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypedDict, runtime_checkable

import numpy as np

from mixplane.client.documents import Documents
from mixplane.errors import StateError, shown
from mixplane.tokens.packing import Packer, PackerState, Window


class WindowPosition(TypedDict):
    """Where a consumer's window stream stands inside its chunk rest (in a job state)."""

    tokenizer: str  # fingerprint
    packer: PackerState  # the packer at the rest's start (its carry)
    taken: list[int]  # per component: windows of the rest yielded


class Handover(TypedDict):
    """What a consumer's stream still owes of a chunk rest, for the consumer it is dealt to."""

    tokenizer: str  # fingerprint: the texts are tokenized again with the same tokenizer
    eos_id: int
    bos_id: int | None
    tokens: list[list[int]]  # per component: the head, before the rest's documents
    starts: list[list[int]]  # per component: where documents start in the head
    skips: list[int]  # per component: tokens of the rest's documents already yielded


@runtime_checkable
class Placed(Protocol):
    """What a job's consumer position keeps of a live window stream (``Stream.report``): its
    place now, or None while unknown (a state loaded without ``taken``, not yet iterated)."""

    def position(self) -> WindowPosition | None: ...


def check_taken(taken: Any, num_components: int, windows: int) -> list[int]:
    """A window stream state's ``taken``: per component, windows of the chunk yielded."""
    if not (_ints(taken) and len(taken) == num_components and sum(taken) == windows):
        msg = f"the window stream state's 'taken' is {shown(taken)}, not {windows} windows"
        raise StateError(msg)
    return taken  # type: ignore[no-any-return]


def handed_over(position: WindowPosition, previous: Handover | None) -> Handover:
    """The handover of a chunk rest whose consumer stood at ``position`` (``previous``: the
    handover that chunk rest was dealt with, if any)."""
    packer = position["packer"]
    length = packer["seq_len"]
    tokens, starts, skips = [], [], []
    for c, taken in enumerate(position["taken"]):
        head, head_starts = list(packer["tokens"][c]), list(packer["starts"][c])
        skip = 0
        if previous is not None:
            head_starts += [len(head) + s for s in previous["starts"][c]]
            head += previous["tokens"][c]
            skip = previous["skips"][c]
        done = taken * length
        if done < len(head):
            tokens.append(head[done:])
            starts.append([0, *(s - done for s in head_starts if s > done)])
        else:
            tokens.append([])
            starts.append([])
            skip += done - len(head)
        skips.append(skip)
    return Handover(
        tokenizer=position["tokenizer"],
        eos_id=packer["eos_id"],
        bos_id=packer["bos_id"],
        tokens=tokens,
        starts=starts,
        skips=skips,
    )


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 for v in values
    )


def _buffers(tokens: Any, starts: Any, num_components: int) -> bool:
    """Per component, token ids and the increasing offsets of document starts among them."""
    return (
        isinstance(tokens, list)
        and isinstance(starts, list)
        and len(tokens) == len(starts) == num_components
        and all(_ints(t) and all(i < 2**31 for i in t) for t in tokens)
        and all(
            _ints(s) and s == sorted(set(s)) and all(x < len(t) for x in s)
            for t, s in zip(tokens, starts, strict=True)
        )
    )


def _ids(value: Any, key: str, optional: bool = False) -> bool:
    v = value.get(key)
    return (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def check_position(value: Any, num_components: int) -> WindowPosition:
    """A consumer's ``window`` from a saved job state, checked for shape."""
    packer = value.get("packer") if isinstance(value, dict) else None
    if not (
        isinstance(packer, dict)
        and isinstance(value.get("tokenizer"), str)
        and _ints(value.get("taken"))
        and len(value["taken"]) == num_components
        and _ids(packer, "seq_len")
        and packer["seq_len"] >= 1
        and _ids(packer, "eos_id")
        and _ids(packer, "bos_id", optional=True)
        and _buffers(packer.get("tokens"), packer.get("starts"), num_components)
    ):
        msg = (
            f"a consumer's window position in the job state is corrupt ({shown(value)}); pass "
            "a state saved by Job.state_dict()"
        )
        raise StateError(msg)
    return value  # type: ignore[return-value]


def check_handover(value: Any, num_components: int) -> Handover:
    """A handover from a saved job state, checked for shape."""
    if not (
        isinstance(value, dict)
        and isinstance(value.get("tokenizer"), str)
        and _ids(value, "eos_id")
        and _ids(value, "bos_id", optional=True)
        and _buffers(value.get("tokens"), value.get("starts"), num_components)
        and _ints(value.get("skips"))
        and len(value["skips"]) == num_components
    ):
        msg = (
            f"a handover in the job state is corrupt ({shown(value)}); pass a state saved by "
            "Job.state_dict()"
        )
        raise StateError(msg)
    return value  # type: ignore[return-value]


def pack_handover(
    rest: Documents,
    handover: Handover,
    packer: Packer,
    encode: Callable[[Sequence[str]], list[list[int]]],
    tokenizer: str,
) -> list[Window]:
    """The windows of a handed-over chunk rest (see the module), each component's in order."""
    if handover["tokenizer"] != tokenizer or (handover["eos_id"], handover["bos_id"]) != (
        packer.eos_id,
        packer.bos_id,
    ):
        msg = (
            "this chunk was handed over by an elastic restore from a stream with another "
            f"tokenizer or other EOS/BOS (eos {handover['eos_id']}, bos {handover['bos_id']}); "
            "stream it with the tokenizer and --bos setting it was saved with"
        )
        raise StateError(msg)
    texts = [i for i in range(len(rest)) if not rest.token[i]]
    strings = [str(rest.docs[i]) for i in texts]
    tokenized = dict(zip(texts, encode(strings), strict=True)) if texts else {}
    extra = 0 if packer.bos_id is None else 1
    windows: list[Window] = []
    for c in range(packer.num_components):
        windows += packer.extend(handover["tokens"][c], c, handover["starts"][c])
        skip = handover["skips"][c]
        for i in np.flatnonzero(rest.components == c).tolist():
            doc = tokenized.get(i, rest.docs[i])
            n = len(doc)
            if n == 0:
                continue
            ends = int(doc[-1]) == packer.eos_id
            size = n + extra + (not ends)
            if skip >= size:
                skip -= size
            elif skip == 0:
                windows += packer.add(doc, c)  # type: ignore[arg-type]
            else:
                parts = [np.asarray(doc, dtype=np.int32)]
                if extra:
                    parts.insert(0, np.array([packer.bos_id], dtype=np.int32))
                if not ends:
                    parts.append(np.array([packer.eos_id], dtype=np.int32))
                windows += packer.extend(np.concatenate(parts)[skip:], c)
                skip = 0
        if skip:
            msg = (
                f"a handed-over chunk has fewer tokens of component {c} than its handover "
                "skips; restore with the job and catalog the state was saved with"
            )
            raise StateError(msg)
    return windows
