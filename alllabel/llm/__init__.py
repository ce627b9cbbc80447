"""The LLM endpoint: an OpenAI-compatible client with its cache, the Batch API, token counting."""
