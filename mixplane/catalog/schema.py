"""Catalog schema: the DuckDB tables, their version, and migrations.

Tables (all in one DuckDB file under the mixplane home):

- ``schema_version(version)``: one row; a newer file than this code refuses to open.
- ``datasets(dataset_id, name, format, text_field, samples, skipped, created_at)``.
- ``files(file_id, dataset_id, path, format, compression, size, mtime_ns, fingerprint, samples,
  skipped)``: what each file looked like when registered, to detect later changes.
- ``properties(name, type)``: the property namespace shared by all datasets.
- ``samples(file_id, ordinal, offset, length, row_group, row, bytes, <one column per property>)``:
  a sample is addressed by (file id, ordinal), ordinals 0..n-1 per file. JSONL: ``offset`` and
  ``length`` of the line in the uncompressed stream. Parquet: ``row_group`` and ``row`` inside it.
  WebDataset: ``offset`` of the first member's header and ``length`` of the span of its members.
  ``bytes`` is the UTF-8 length of the sample's text, used to plan token budgets.
- ``token_counts(tokenizer, file_id, ordinal, tokens)`` and ``token_count_files``: exact token
  counts per tokenizer fingerprint, filled by ``count_tokens`` (schema v2).
- ``token_files(file_id, tokenizer, tokenizer_source, dtype, eos_id, vocab_size)``: the files
  of pre-tokenized datasets (schema v3): the fingerprint of the tokenizer their ids belong to
  (and the name or path it was loaded from), the dtype of the stored ids, the tokenizer's EOS
  id and vocabulary size. Their samples point at byte spans of ids (``offset``, ``length``)
  or at rows (Parquet), and their exact token counts are in ``token_counts`` under that
  fingerprint, written by the registration itself.

Properties are columns of ``samples`` (added with ALTER TABLE inside the registering
transaction): columnar storage keeps a filter or group-by on a property a scan of one column.
"""

from __future__ import annotations

import duckdb

from mixplane.errors import SchemaVersionError

SCHEMA_VERSION = 3

_DDL_V1 = [
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE datasets (
        dataset_id INTEGER PRIMARY KEY,
        name VARCHAR NOT NULL UNIQUE,
        format VARCHAR NOT NULL,
        text_field VARCHAR,
        samples BIGINT NOT NULL,
        skipped BIGINT NOT NULL,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    )""",
    """CREATE TABLE files (
        file_id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL,
        path VARCHAR NOT NULL,
        format VARCHAR NOT NULL,
        compression VARCHAR,
        size BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        fingerprint VARCHAR NOT NULL,
        samples BIGINT NOT NULL,
        skipped BIGINT NOT NULL
    )""",
    "CREATE TABLE properties (name VARCHAR PRIMARY KEY, type VARCHAR NOT NULL)",
    """CREATE TABLE samples (
        file_id INTEGER NOT NULL,
        ordinal BIGINT NOT NULL,
        "offset" BIGINT,
        length BIGINT,
        row_group INTEGER,
        "row" INTEGER,
        bytes BIGINT NOT NULL
    )""",
    "CREATE SEQUENCE dataset_ids START 1",
    "CREATE SEQUENCE file_ids START 1",
]

#: Migrations from version v to v + 1, applied in order in one transaction.
MIGRATIONS: dict[int, list[str]] = {
    # v2: exact per-sample token counts per tokenizer fingerprint (``count_tokens``)
    1: [
        """CREATE TABLE token_counts (
            tokenizer VARCHAR NOT NULL,
            file_id INTEGER NOT NULL,
            ordinal BIGINT NOT NULL,
            tokens BIGINT NOT NULL
        )""",
        """CREATE TABLE token_count_files (
            tokenizer VARCHAR NOT NULL,
            file_id INTEGER NOT NULL,
            PRIMARY KEY (tokenizer, file_id)
        )""",
    ],
    # v3: files of pre-tokenized datasets (``formats.tokenized``)
    2: [
        """CREATE TABLE token_files (
            file_id INTEGER PRIMARY KEY,
            tokenizer VARCHAR NOT NULL,
            tokenizer_source VARCHAR NOT NULL,
            dtype VARCHAR NOT NULL,
            eos_id BIGINT NOT NULL,
            vocab_size BIGINT NOT NULL
        )""",
    ],
}

#: Columns of ``samples`` that every row has, in order.
BASE_COLUMNS = ("file_id", "ordinal", "offset", "length", "row_group", "row", "bytes")


def ensure_schema(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Create the schema in an empty database, or migrate an older one to SCHEMA_VERSION."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "schema_version" not in tables:
        con.execute("BEGIN TRANSACTION")
        for stmt in _DDL_V1:
            con.execute(stmt)
        con.execute("INSERT INTO schema_version VALUES (?)", [1])
        _migrate(con, 1)
        con.execute("COMMIT")
        return
    rows = con.execute("SELECT version FROM schema_version").fetchall()  # no result left open
    row = rows[0] if rows else None
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        msg = (
            f"catalog {path} has schema version {version}, newer than this mixplane "
            f"({SCHEMA_VERSION}); upgrade mixplane to open it"
        )
        raise SchemaVersionError(msg)
    if version < SCHEMA_VERSION:
        con.execute("BEGIN TRANSACTION")
        _migrate(con, version)
        con.execute("COMMIT")


def _migrate(con: duckdb.DuckDBPyConnection, version: int) -> None:
    while version < SCHEMA_VERSION:
        for stmt in MIGRATIONS[version]:
            con.execute(stmt)
        version += 1
        con.execute("UPDATE schema_version SET version = ?", [version])
