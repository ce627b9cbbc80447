"""What a chat completion's reply means: ``completion_from_json``, ``LLMError``, and what to advise
when a reply was cut at the token cap (a loop is not a long answer)."""

from __future__ import annotations

import re

from alllabel.llm.cache import Completion
from alllabel.llm.config import LLMConfig


class LLMError(RuntimeError):
    """A call failed for good (after the client's retries, or at once for errors a retry cannot fix)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        truncated: bool = False,
        usage: tuple[int, int] | None = None,
    ):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.truncated = truncated  # the reply was cut at max_tokens (billed all the same)
        self.usage = usage  # (prompt, completion) tokens the failed reply reported, if any
        self.timed_out = False


def completion_from_json(data: dict) -> Completion:
    """A Completion from a chat-completion body (online reply or Batch API output line)."""
    choices = data.get("choices") or []
    if not choices:
        raise LLMError("the LLM returned no choices", retryable=False)
    choice = choices[0]
    usage = data.get("usage") or {}
    if choice.get("finish_reason") == "length":
        text = (choice.get("message") or {}).get("content") or ""
        raise LLMError(
            truncation_advice(text),
            retryable=False,
            truncated=True,
            usage=(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0),
        )
    text = (choice.get("message") or {}).get("content") or ""
    content = (choice.get("logprobs") or {}).get("content")
    logprobs = [(t["token"], float(t["logprob"])) for t in content] if content else None
    return Completion(
        text=text,
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        logprobs=logprobs,
    )


def repeats(text: str, tail: int = 600) -> bool:
    """The reply ends in a loop: at least half of its last ``tail`` characters are one short piece
    said over and over (a small model repeating an entity or a line until the token cap)."""
    end = text[-tail:]
    if len(end) < 120:
        return False
    for size in range(1, len(end) // 4 + 1):
        unit, times = end[-size:], 1
        while end.endswith(unit * (times + 1)):
            times += 1
        if times >= 3 and times * size >= len(end) // 2:
            return True
    return False


def truncation_advice(text: str) -> str:
    """What to do about a reply cut at ALLABEL_LLM_MAX_TOKENS, by what the reply looks like."""
    if repeats(text):
        return (
            "the model repeated itself until ALLABEL_LLM_MAX_TOKENS (a loop, not a long answer): "
            "use a stronger model, more demonstrations (--k), or ALLABEL_LLM_TEMPERATURE 0.2-0.5"
        )
    return (
        "the reply was cut at ALLABEL_LLM_MAX_TOKENS: raise it, or lower "
        "ALLABEL_MAX_PROMPT_TOKENS so long tasks are cut into smaller windows"
    )


def context_hint(text: str, config: LLMConfig) -> str:
    """Advice for a prompt the model's context cannot hold (llama.cpp: "exceed context window of
    N"; OpenAI, vLLM: "maximum context length is N tokens")."""
    m = re.search(r"context (?:window of|length is) (\d+)", text)
    held = f"{m.group(1)} tokens" if m else "fewer tokens"
    return (
        f" (the model's context holds {held}, less than ALLABEL_MAX_PROMPT_TOKENS "
        f"{config.max_prompt_tokens} + ALLABEL_LLM_MAX_TOKENS {config.max_tokens}: set "
        f"ALLABEL_LLM_CONTEXT{'=' + m.group(1) if m else ''} and the budgets are fitted to it)"
    )
