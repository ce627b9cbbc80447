"""Pre-annotation: prompts within a token limit, annotators, near-duplicate carry-over, the cost cap."""
