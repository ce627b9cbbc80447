"""Durable backend state in SQLite: the tasks, the human annotations, our predictions.

Everything the backend decides is written here before it is sent to Label Studio, so a restart
or crash resumes where it stopped without duplicate predictions or lost tasks.

Annotations only change on facts. Every change is stamped with a value of a monotonic clock
(``State.tick``). A snapshot of Label Studio taken from clock value S may remove an annotation
only if the annotation's last fact is older than S: an annotation a webhook reported while the
snapshot was being fetched is never erased by it, and a deletion reported meanwhile is never
undone by it. Webhooks themselves are *claims* (status ``claimed``) until Label Studio confirms
them (``verified``); only verified annotations count toward the budget.

The schema is versioned (``PRAGMA user_version``); ``schema.MIGRATIONS`` upgrade older files in
place. One module per table family: ``projects`` (projects and tasks), ``annotations`` (facts
and claims), ``predictions`` (queue entries, pre-annotations and pushes); rows are read by
column name.
"""

from __future__ import annotations

from alllabel.backend.state.lock import DirectoryLock
from alllabel.backend.state.predictions import Prediction
from alllabel.backend.state.store import State

__all__ = ["DirectoryLock", "Prediction", "State"]
