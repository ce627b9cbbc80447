"""Falling back to a weaker ``response_format`` when an endpoint refuses one, and remembering it
per endpoint and model in the LLM cache file (``LLMClient`` inherits this)."""

from __future__ import annotations

import logging

from alllabel.llm.cache import Completion
from alllabel.llm.replies import LLMError

log = logging.getLogger("alllabel.llm.client")  # the messages users grep for stay where they were


class FormatFallback:
    """Needs ``_format``, ``_format_confirmed``, ``_call``, ``cache``, ``config``, ``_endpoint``."""

    def refused_format(self, status: int | None, message: str) -> bool:
        """A reply that came back some other way (a Batch API error line) refused our
        response_format: weaken it for the next requests. True if it did."""
        text = message.lower()
        if status not in (400, 422) or not ("response_format" in text or "json_schema" in text):
            return False
        weaker = {"json_schema": "json_object", "json_object": "none"}.get(self._format)
        if weaker is None:
            return False
        log.warning(
            "the endpoint refused response_format %s in a batch; using %s from now on",
            self._format,
            weaker,
        )
        self._format, self._format_confirmed = weaker, False
        self._remember_format()
        return True

    def _fall_back(
        self, old: str, new: str, status: int, messages: list[dict], schema: dict | None
    ) -> Completion:
        """Retry with a weaker response_format; keep it only if the endpoint then answers at once
        (if it needed retries too, it was failing rather than refusing: probe again next call)."""
        previous = self._format
        self._format = new
        try:
            result = self._call(messages, schema)
        except LLMError:
            self._format = previous
            raise
        if result.retries:
            self._format = previous
            return result
        log.warning(
            "the endpoint refused response_format %s (HTTP %d); using %s from now on",
            old,
            status,
            self._format,
        )
        self._remember_format()
        return result

    def _remember_format(self) -> None:
        if self.cache is not None:
            self.cache.remember_format(self._endpoint, self.config.model, self._format)
