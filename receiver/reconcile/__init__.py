"""Reconciliation: poll vendors that do not call back (or whose callbacks stopped) and feed
what changed through the intake as synthesized, reconciled deliveries."""

from __future__ import annotations

import asyncio

from receiver.config import SourceSettings
from receiver.reconcile.base import Page, Poller
from receiver.reconcile.clarifai import ClarifaiPoller
from receiver.reconcile.http import Sleep
from receiver.reconcile.refonte import RefontePoller
from receiver.reconcile.runner import Reconciler, Summary
from receiver.reconcile.taskmonk import TaskMonkPoller

__all__ = ["Page", "Poller", "Reconciler", "Summary", "poller_for"]


def poller_for(name: str, settings: SourceSettings, *, sleep: Sleep = asyncio.sleep) -> Poller:
    """The poller of a source with a ``[reconcile]`` table (the settings checked it has one)."""
    rc = settings.reconcile
    assert rc is not None
    if settings.kind == "taskmonk":
        return TaskMonkPoller(name, settings.api_url, rc, sleep=sleep)
    if settings.kind == "clarifai":
        return ClarifaiPoller(name, settings.api_url, rc, sleep=sleep)
    return RefontePoller(name, settings.api_url, rc, sleep=sleep)
