"""alllabel: ALLabel active-learning selection and LLM pre-annotation for Label Studio."""
from .selection import Selection, select, stage_sizes
from .similarity import BM25Similarity, DenseSimilarity, SBERTSimilarity, make_similarity

__all__ = ["select", "Selection", "stage_sizes", "BM25Similarity", "SBERTSimilarity", "DenseSimilarity", "make_similarity"]
