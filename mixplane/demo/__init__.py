"""A small real multi-language demo corpus built from text shipped in installed packages."""

from mixplane.demo.corpus import SOURCES, CorpusPart, build_corpus, build_part, split_of

__all__ = ["SOURCES", "CorpusPart", "build_corpus", "build_part", "split_of"]
