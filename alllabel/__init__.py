"""alllabel: ALLabel active-learning selection and LLM pre-annotation for Label Studio."""

from alllabel.selection.replan import Planner
from alllabel.selection.similarity import (
    BM25Similarity,
    DenseSimilarity,
    SBERTSimilarity,
    make_similarity,
)
from alllabel.selection.stages import Selection, select, stage_sizes

__all__ = [
    "select",
    "Selection",
    "stage_sizes",
    "BM25Similarity",
    "SBERTSimilarity",
    "DenseSimilarity",
    "make_similarity",
    "Planner",
]
