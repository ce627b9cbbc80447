"""Text utilities shared by every layer: tokens for BM25, sentences and windows, span alignment, JSONL."""
