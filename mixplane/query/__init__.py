"""Filters over sample properties: build (``col``), parse (``parse_filter``), compile to SQL."""

from mixplane.query.compile import Column, compile_filter
from mixplane.query.expr import Expr, col, expr_from_json
from mixplane.query.parse import parse_filter

__all__ = ["Column", "Expr", "col", "compile_filter", "expr_from_json", "parse_filter"]
