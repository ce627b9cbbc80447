"""The Label Studio API calls the backend makes, over plain HTTP (httpx).

Authentication: a personal access token (a JWT refresh token, exchanged at
``/api/token/refresh/`` for 5-minute access tokens sent as ``Bearer``) or a legacy token (sent as
``Token``). Every failure surfaces as ``LabelStudioError`` with a ``kind`` the controller uses to
decide what to do, and a message that says what to fix.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

QUEUE_VIEW_TITLE = "ALLabel queue"
REVIEW_VIEW_TITLE = "ALLabel review"
SAMPLING = "Uncertainty sampling"
# Task pages: Label Studio pays ~0.6 s per page (it counts the page's annotations and predictions)
# on top of the tasks, and caps page_size only when TASK_API_PAGE_SIZE_MAX is set (then the cap
# applies silently and more pages are read). 10,000 tasks: 20 pages of 500 took 26 s, one page 15 s.
PAGE_SIZE = 5000
PAGE_TIMEOUT = 180.0  # seconds for one page of PAGE_SIZE tasks on a busy server


class LabelStudioError(RuntimeError):
    """``kind``: unreachable | auth | not_found | server | client."""

    def __init__(self, message: str, *, kind: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind in ("unreachable", "server") or self.status == 429


@dataclass
class LSPrediction:
    id: int
    task: int
    model_version: str | None
    score: float | None
    result: list


def _jwt_claims(token: str) -> dict | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None


class LabelStudioAPI:
    def __init__(self, url: str, api_key: str, timeout: float = 30.0):
        if not url or not api_key:
            raise LabelStudioError(
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set so the backend can read tasks and push the queue",
                kind="auth",
            )
        self.url = url.rstrip("/")
        self._key = api_key
        claims = _jwt_claims(api_key)
        self._pat = claims is not None and claims.get("token_type") == "refresh"
        self._access: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self.requests = 0  # calls made, for the idle-cost figure in /status

    @classmethod
    def from_env(cls) -> "LabelStudioAPI":
        return cls(
            os.environ.get("LABEL_STUDIO_URL", ""), os.environ.get("LABEL_STUDIO_API_KEY", "")
        )

    # --- transport -------------------------------------------------------------------------------
    def _authorization(self) -> str:
        if not self._pat:
            return f"Token {self._key}"
        with self._lock:
            if self._access is None or self._access[1] < time.time() + 30:
                r = self._send(
                    "POST",
                    "/api/token/refresh/",
                    json={"refresh": self._key},
                    auth=False,
                    what="refresh the access token",
                )
                access = r.json()["access"]
                exp = (_jwt_claims(access) or {}).get("exp", time.time() + 240)
                self._access = (access, float(exp))
            return f"Bearer {self._access[0]}"

    def _send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        auth: bool = True,
        ok404: bool = False,
        timeout: float | None = None,
        **kw,
    ) -> httpx.Response | None:
        headers = {"Authorization": self._authorization()} if auth else {}
        self.requests += 1
        try:
            r = self._http.request(
                method, path, headers=headers, timeout=timeout or self._http.timeout, **kw
            )
        except httpx.HTTPError as e:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} to {what} ({type(e).__name__}: {e}); check LABEL_STUDIO_URL and that Label Studio is running",
                kind="unreachable",
            ) from e
        if r.status_code == 404 and ok404:
            return None
        if r.status_code < 400:
            return r
        detail = _detail(r)
        if r.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} rejected LABEL_STUDIO_API_KEY (HTTP {r.status_code}: {detail}) when trying to {what}: "
                "set it to a personal access token (Account & Settings) or an enabled legacy token",
                kind="auth",
                status=r.status_code,
            )
        if r.status_code == 404:
            raise LabelStudioError(
                f"Label Studio at {self.url} answered 404 when trying to {what}: {detail}",
                kind="not_found",
                status=404,
            )
        kind = "server" if r.status_code >= 500 else "client"
        raise LabelStudioError(
            f"Label Studio at {self.url} answered HTTP {r.status_code} when trying to {what}: {detail}",
            kind=kind,
            status=r.status_code,
        )

    def _json(self, method: str, path: str, *, what: str, **kw):
        r = self._send(method, path, what=what, **kw)
        return None if r is None or not r.content else r.json()

    # --- identity and projects -------------------------------------------------------------------
    def whoami(self, timeout: float | None = None) -> dict:
        return self._json(
            "GET", "/api/current-user/whoami", what="check the API key", timeout=timeout
        )

    def project(self, project_id: int, timeout: float | None = None) -> dict:
        return self._json(
            "GET",
            f"/api/projects/{project_id}/",
            what=f"read project {project_id}",
            timeout=timeout,
        )

    def update_project(self, project_id: int, **fields) -> dict:
        return self._json(
            "PATCH",
            f"/api/projects/{project_id}/",
            json=fields,
            what=f"update project {project_id}",
        )

    # --- tasks and annotations -------------------------------------------------------------------
    def tasks(
        self,
        project_id: int,
        *,
        updated_after: str | None = None,
        annotated: bool = False,
        with_annotations: bool = False,
    ) -> list[dict]:
        """Tasks of a project (id, data, updated_at, counts), paged; optionally only those changed
        after an ``updated_at`` value or only annotated ones, optionally with their annotations."""
        items = []
        if updated_after:
            items.append(
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater",
                    "type": "Datetime",
                    "value": updated_after,
                }
            )
        if annotated:
            items.append(
                {
                    "filter": "filter:tasks:total_annotations",
                    "operator": "greater",
                    "type": "Number",
                    "value": 0,
                }
            )
        params = {"project": project_id, "page_size": PAGE_SIZE}
        if items:
            params["query"] = json.dumps({"filters": {"conjunction": "and", "items": items}})
        if with_annotations:
            params["fields"] = "all"
        out: list[dict] = []
        page = 1
        while True:
            body = self._json(
                "GET",
                "/api/tasks/",
                params={**params, "page": page},
                what=f"list the tasks of project {project_id}",
                ok404=page > 1,
                timeout=max(PAGE_TIMEOUT, self._http.timeout.read or 0),
            )
            if body is None:  # past the last page
                break
            out += body.get("tasks") or []
            if len(out) >= (body.get("total") or 0) or not body.get("tasks"):
                break
            page += 1
        return out

    def annotation(self, annotation_id: int) -> dict | None:
        """One annotation, or None if Label Studio has no such annotation."""
        return self._json(
            "GET",
            f"/api/annotations/{annotation_id}/",
            what=f"read annotation {annotation_id}",
            ok404=True,
        )

    # --- predictions -----------------------------------------------------------------------------
    def prediction(self, prediction_id: int) -> dict | None:
        """One prediction, or None if Label Studio has no such prediction."""
        return self._json(
            "GET",
            f"/api/predictions/{prediction_id}/",
            what=f"read prediction {prediction_id}",
            ok404=True,
        )

    def predictions(self, project_id: int, model_version: str | None = None) -> list[LSPrediction]:
        rows = (
            self._json(
                "GET",
                "/api/predictions/",
                params={"project": project_id},
                what=f"list the predictions of project {project_id}",
            )
            or []
        )
        return [
            LSPrediction(
                p["id"], p["task"], p.get("model_version"), p.get("score"), p.get("result") or []
            )
            for p in rows
            if model_version is None or p.get("model_version") == model_version
        ]

    def import_predictions(self, project_id: int, items: list[dict]) -> int:
        if not items:
            return 0
        body = self._json(
            "POST",
            f"/api/projects/{project_id}/import/predictions",
            json=items,
            what=f"import {len(items)} prediction(s) into project {project_id}",
        )
        created = (body or {}).get("created", len(items))
        if created != len(items):
            raise LabelStudioError(
                f"Label Studio created {created} of {len(items)} predictions in project {project_id}; scores must lie in [0, 1] and tasks must exist",
                kind="client",
            )
        return created

    def update_prediction(self, prediction_id: int, result: list, score: float) -> None:
        self._json(
            "PATCH",
            f"/api/predictions/{prediction_id}/",
            json={"result": result, "score": score},
            what=f"update prediction {prediction_id}",
        )

    def delete_prediction(self, prediction_id: int) -> None:
        self._send(
            "DELETE",
            f"/api/predictions/{prediction_id}/",
            what=f"delete prediction {prediction_id}",
            ok404=True,
        )

    # --- Data Manager tabs and webhooks ----------------------------------------------------------
    def views(self, project_id: int) -> list[dict]:
        return (
            self._json(
                "GET",
                "/api/dm/views/",
                params={"project": project_id},
                what=f"list the tabs of project {project_id}",
            )
            or []
        )

    def create_view(self, project_id: int, data: dict) -> int:
        return self._json(
            "POST",
            "/api/dm/views/",
            json={"project": project_id, "data": data},
            what=f"create a tab in project {project_id}",
        )["id"]

    def ml_backends(self, project_id: int) -> list[dict]:
        return (
            self._json(
                "GET",
                "/api/ml/",
                params={"project": project_id},
                what=f"list the ML backends of project {project_id}",
            )
            or []
        )

    def backend_webhooks(self, project_id: int, model_version: str) -> list[dict]:
        """The project's webhooks that Label Studio made for this backend (``<ML url>/webhook`` of
        the ML backends titled ``model_version``)."""
        urls = {
            (m.get("url") or "").rstrip("/") + "/webhook"
            for m in self.ml_backends(project_id)
            if m.get("title") == model_version
        }
        hooks = (
            self._json(
                "GET",
                "/api/webhooks/",
                params={"project": project_id},
                what=f"list the webhooks of project {project_id}",
            )
            or []
        )
        return [w for w in hooks if (w.get("url") or "").rstrip("/") in urls]

    def set_webhook_headers(self, hook: dict, headers: dict[str, str]) -> None:
        """Replace a webhook's headers (Label Studio sends them with every event)."""
        self._json(
            "PATCH",
            f"/api/webhooks/{hook['id']}/",
            json={"url": hook["url"], "headers": headers},
            what="sign the backend's webhook",
        )

    def close(self) -> None:
        self._http.close()

    def ml_backends_quick(self, project_id: int, timeout: float) -> list[dict]:
        """``ml_backends`` within ``timeout`` (for /setup, which Label Studio waits 3 s for)."""
        path, what = "/api/ml/", f"list the ML backends of project {project_id}"
        params = {"project": project_id}
        return self._json("GET", path, params=params, what=what, timeout=timeout) or []


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("validation_errors") or body)[:300]
    return str(body)[:300]
