"""What an OpenAI-compatible endpoint says about itself: the model's context window and the
server's parallel slots, where it reports them (vLLM: ``max_model_len`` in /models; llama.cpp's
llama-server: ``meta.n_ctx`` / ``n_ctx_train`` in /models, ``total_slots`` and ``n_ctx`` in /props).
llama-cpp-python's server and OpenAI report neither: then ``ALLABEL_LLM_CONTEXT`` says it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx2

log = logging.getLogger(__name__)


@dataclass
class Reported:
    context: int | None = None  # tokens, prompt and reply together
    slots: int | None = None  # completions the server runs at once


def discover(base_url: str, model: str, api_key: str | None = None) -> Reported:
    """What ``base_url`` reports for ``model`` (nothing when it reports nothing, or is down)."""
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
    slots = props.get("total_slots")
    return Reported(context, slots if isinstance(slots, int) and slots > 0 else None)


def _get_json(url: str, headers: dict) -> dict | None:
    """GET a small JSON document from the endpoint; None when it has none (or is down)."""
    try:
        r = httpx2.get(url, headers=headers, timeout=5.0)
        data = r.json() if r.status_code == 200 else None
        return data if isinstance(data, dict) else None
    except (httpx2.HTTPError, ValueError) as e:
        log.debug("no %s from the endpoint: %s", url, e)
        return None
