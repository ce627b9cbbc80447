"""The few Label Studio API calls the backend makes, through label-studio-sdk 2.x.

The SDK handles both personal access tokens (JWT, refreshed automatically) and legacy tokens.
Every failure surfaces as ``LabelStudioError`` with a message that says what to fix.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

QUEUE_VIEW_TITLE = "ALLabel queue"
SAMPLING = "Uncertainty sampling"


class LabelStudioError(RuntimeError):
    pass


def _plain(obj) -> dict:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return dict(obj)


def _wrap(fn):
    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except LabelStudioError:
            raise
        except Exception as e:  # noqa: BLE001 - HTTP and transport errors get an actionable message
            status = getattr(e, "status_code", None)
            if status is None and not isinstance(e, (httpx.TransportError, OSError)):
                raise  # a bug, not Label Studio's answer
            if status in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} rejected the API key (HTTP {status}) during {fn.__name__}: set "
                    "LABEL_STUDIO_API_KEY to a personal access token (Account & Settings) or an enabled legacy token"
                ) from e
            if status == 404:
                raise LabelStudioError(f"Label Studio at {self.url} answered 404 during {fn.__name__}: does the project exist? ({e})") from e
            if status is not None:
                raise LabelStudioError(f"Label Studio at {self.url} answered HTTP {status} during {fn.__name__}: {getattr(e, 'body', e)}") from e
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({type(e).__name__}: {e}); check LABEL_STUDIO_URL") from e

    return call


@dataclass
class LSPrediction:
    id: int
    task: int
    model_version: str
    score: float | None
    result: list


class LabelStudioAPI:
    def __init__(self, url: str, api_key: str, timeout: float = 60.0):
        if not url or not api_key:
            raise LabelStudioError(
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set so the backend can read tasks and push the queue"
            )
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.client = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)

    @classmethod
    def from_env(cls) -> "LabelStudioAPI":
        return cls(os.environ.get("LABEL_STUDIO_URL", ""), os.environ.get("LABEL_STUDIO_API_KEY", ""))

    @_wrap
    def project(self, project_id: int) -> dict:
        return _plain(self.client.projects.get(id=project_id))

    @_wrap
    def tasks(self, project_id: int) -> list[dict]:
        """All tasks with data and annotations (paged by the SDK)."""
        return [_plain(t) for t in self.client.tasks.list(project=project_id, fields="all", page_size=500)]

    @_wrap
    def predictions(self, project_id: int, model_version: str | None = None) -> list[LSPrediction]:
        out = []
        for p in self.client.predictions.list(project=project_id):
            p = _plain(p)
            if model_version is None or p.get("model_version") == model_version:
                out.append(LSPrediction(p["id"], p["task"], p.get("model_version"), p.get("score"), p.get("result") or []))
        return out

    @_wrap
    def import_predictions(self, project_id: int, predictions: list[dict]) -> int:
        if not predictions:
            return 0
        r = _plain(self.client.projects.import_predictions(id=project_id, request=predictions))
        created = r.get("created", len(predictions))
        if created != len(predictions):
            raise LabelStudioError(
                f"Label Studio created {created} of {len(predictions)} predictions in project {project_id}; "
                "scores must lie in [0, 1] and tasks must exist"
            )
        return created

    @_wrap
    def update_prediction(self, prediction_id: int, result: list, score: float) -> None:
        self.client.predictions.update(id=prediction_id, result=result, score=score)

    @_wrap
    def use_queue(self, project_id: int, model_version: str) -> None:
        """Make Label All Tasks and /next serve the lowest prediction score of our version first."""
        self.client.projects.update(id=project_id, model_version=model_version, sampling=SAMPLING, show_collab_predictions=True)

    @_wrap
    def ensure_queue_view(self, project_id: int) -> int:
        """A Data Manager tab ordered by our score, for "Label Tasks As Displayed"."""
        data = {
            "title": QUEUE_VIEW_TITLE,
            "ordering": ["tasks:predictions_score"],
            "filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]},
        }
        for v in self.client.views.list(project=project_id):
            v = _plain(v)
            if (v.get("data") or {}).get("title") == QUEUE_VIEW_TITLE:
                self.client.views.update(id=str(v["id"]), project=project_id, data=data)
                return v["id"]
        return _plain(self.client.views.create(project=project_id, data=data))["id"]

    @_wrap
    def authorize_webhooks(self, project_id: int, model_version: str, authorization: str) -> int:
        """Add our basic-auth header to the webhook LS created for this backend (it sends none)."""
        urls = {(_plain(m).get("url") or "").rstrip("/") + "/webhook" for m in self.client.ml.list(project=project_id)
                if _plain(m).get("title") == model_version}
        n = 0
        for w in self.client.webhooks.list(project=str(project_id)):
            w = _plain(w)
            if w.get("url", "").rstrip("/") in urls and (w.get("headers") or {}).get("Authorization") != authorization:
                self.client.webhooks.update(id=w["id"], url=w["url"], headers={**(w.get("headers") or {}), "Authorization": authorization})
                n += 1
        return n
