"""Which tasks humans annotate: similarity (BM25, SBERT), screening, ALLabel's three stages, retrieval."""
