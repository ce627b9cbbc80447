"""What an OpenAI-compatible endpoint says about itself: the model's context window and the
server's parallel slots, where it reports them (vLLM: ``max_model_len`` in /models; llama.cpp's
llama-server: ``meta.n_ctx`` / ``n_ctx_train`` in /models, ``total_slots`` and ``n_ctx`` in /props).
Ollama reports no context in /models; its own API does (``ollama``). llama-cpp-python's server and
OpenAI report neither: then ``ALLABEL_LLM_CONTEXT`` says it."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import httpx2

log = logging.getLogger(__name__)


@dataclass
class Reported:
    context: int | None = None  # tokens, prompt and reply together
    slots: int | None = None  # completions the server runs at once


def discover(
    base_url: str, model: str, api_key: str | None = None, *, context_set: bool = False
) -> Reported:
    """What ``base_url`` reports for ``model`` (nothing when it reports nothing, or is down).
    ``context_set``: ALLABEL_LLM_CONTEXT says the context (Ollama is not asked)."""
    root = base_url.rstrip("/")
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    models = (_get_json(root + "/models", auth) or {}).get("data") or []
    props = _get_json(root.removesuffix("/v1") + "/props", auth) or {}
    entry = next((m for m in models if m.get("id") == model), None)
    if entry is None and len(models) == 1:  # a local server answers any model name
        entry = models[0]
    entry = entry or {}
    meta = entry.get("meta") or {}
    settings = props.get("default_generation_settings") or {}
    context = next(
        (
            v
            for v in (
                entry.get("max_model_len"),
                meta.get("n_ctx"),
                settings.get("n_ctx"),
                meta.get("n_ctx_train"),
            )
            if isinstance(v, int) and v > 0
        ),
        None,
    )
    if context is None and not props and not context_set:
        context = ollama_context(root.removesuffix("/v1"), model, auth)
    slots = props.get("total_slots")
    return Reported(context, slots if isinstance(slots, int) and slots > 0 else None)


# Ollama's context when nothing sets it: 2048 before 0.6.7 (April 2025), 4096 after, from
# January 2026 4k/32k/256k by the GPU's memory. The smallest is assumed: a prompt over the context
# Ollama runs with is cut silently (its log says "truncating input prompt"), not refused.
OLLAMA_FLOOR = 2048


def ollama_context(root: str, model: str, auth: dict) -> int | None:
    """The context Ollama runs ``model`` with: ``context_length`` in /api/ps while the model is
    loaded (Ollama 0.9.7+), else ``num_ctx`` in its Modelfile parameters (/api/show), else
    ``OLLAMA_FLOOR``; never more than the model's trained length (``model_info``). None when
    ``root`` is not Ollama."""
    show = _post_json(root + "/api/show", {"model": model}, auth)
    if show is None or not isinstance(show.get("model_info"), dict):
        return None
    trained = next(
        (v for k, v in show["model_info"].items() if k.endswith(".context_length")), None
    )
    names = {model, model + ":latest"}
    loaded = (_get_json(root + "/api/ps", auth) or {}).get("models") or []
    running = next(
        (m.get("context_length") for m in loaded if {m.get("name"), m.get("model")} & names), None
    )
    num_ctx = re.search(r"^num_ctx\s+(\d+)", show.get("parameters") or "", re.M)
    if isinstance(running, int) and running > 0:
        context, source = running, "/api/ps (the model as loaded)"
    elif num_ctx:
        context, source = int(num_ctx.group(1)), "num_ctx in its Modelfile"
    else:
        context, source = OLLAMA_FLOOR, "Ollama's smallest default (it reports none)"
        log.warning(
            "Ollama does not say the context it will run %s with until it is loaded: assuming "
            "%d tokens; set ALLABEL_LLM_CONTEXT to its num_ctx / OLLAMA_CONTEXT_LENGTH "
            "(`ollama ps` shows it once loaded) for longer prompts",
            model,
            OLLAMA_FLOOR,
        )
    if isinstance(trained, int) and 0 < trained < context:
        context = trained
    log.info("Ollama runs %s with %d tokens of context (%s)", model, context, source)
    return context


def _get_json(url: str, headers: dict) -> dict | None:
    """GET a small JSON document from the endpoint; None when it has none (or is down)."""
    try:
        r = httpx2.get(url, headers=headers, timeout=5.0)
        data = r.json() if r.status_code == 200 else None
        return data if isinstance(data, dict) else None
    except (httpx2.HTTPError, ValueError) as e:
        log.debug("no %s from the endpoint: %s", url, e)
        return None


def _post_json(url: str, body: dict, headers: dict) -> dict | None:
    """POST a small JSON query to the endpoint; None when it has no such route (or is down)."""
    try:
        r = httpx2.post(url, json=body, headers=headers, timeout=5.0)
        data = r.json() if r.status_code == 200 else None
        return data if isinstance(data, dict) else None
    except (httpx2.HTTPError, ValueError) as e:
        log.debug("no %s from the endpoint: %s", url, e)
        return None
