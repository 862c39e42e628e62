"""The catalog: datasets, files, typed properties and samples in one embedded DuckDB file."""

from mixplane.catalog.catalog import Catalog, default_home
from mixplane.catalog.ingest import DatasetInfo, FileReport
from mixplane.catalog.properties import PRESETS, PropertyType

__all__ = ["PRESETS", "Catalog", "DatasetInfo", "FileReport", "PropertyType", "default_home"]
