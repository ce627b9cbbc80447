"""The ALLabel Label Studio ML backend class.

It keeps the familiar shape of label-studio-ml backends - ``setup``, ``predict(tasks, context,
**kwargs)``, ``fit(event, data)`` - but is served by our own Flask app (``_wsgi.py``): PyPI's
label-studio-ml 1.0.9 pins vulnerable Flask/Werkzeug versions and mishandles LS 1.23's events,
and its 2.x is not on PyPI. The work itself lives in ``alllabel.backend.orchestrator``.
"""

from __future__ import annotations

from alllabel.backend.orchestrator import Orchestrator
from alllabel.backend.settings import Settings
from alllabel.llm.client import LLMConfig


class ALLabelBackend:
    """Orders the annotation queue with ALLabel, then pre-annotates the rest with an LLM."""

    def __init__(
        self, settings: Settings | None = None, ls_factory=None, llm_config: LLMConfig | None = None
    ):
        self.orchestrator = Orchestrator(settings, ls_factory, llm_config)

    @property
    def model_version(self) -> str:
        return self.orchestrator.settings.model_version

    def setup(self, project, label_config: str) -> str:
        """Called on every /setup: registers the project; returns the model version."""
        return self.orchestrator.setup(project, label_config)

    def predict(
        self, tasks: list[dict], context: dict | None = None, project=None, **kwargs
    ) -> list:
        """One entry per task, in order: a stored prediction dict, or [] for none."""
        return self.orchestrator.predict(project, tasks)

    def fit(self, event: str, data: dict, **kwargs) -> dict:
        """Webhook events (annotations, new tasks, START_TRAINING): recorded fast, work runs in the background."""
        return self.orchestrator.webhook({**data, "action": event})

    def status(self, project: int | None = None) -> dict:
        return self.orchestrator.status(project)
