"""mixplane: a declarative training-data plane for foundation-model training.

Register corpora that already exist as files, with per-sample properties, in an embedded DuckDB
catalog; select samples with filters over properties; group them into components; and (in later
modules) mix, plan, tokenize and stream them to every rank of a training job.
"""

from mixplane.catalog import Catalog, DatasetInfo, PropertyType
from mixplane.errors import MixplaneError
from mixplane.query import col, parse_filter
from mixplane.query.result import Component, QueryResult

__version__ = "0.1.0"

__all__ = [
    "Catalog",
    "Component",
    "DatasetInfo",
    "MixplaneError",
    "PropertyType",
    "QueryResult",
    "col",
    "parse_filter",
]
