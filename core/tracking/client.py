"""Burr's `burr.tracking.client` module place: the tracking clients."""

from fanwise.core.tracking.base import SyncTrackingClient, TrackingClient
from fanwise.core.tracking.local import LocalTrackingClient

__all__ = ["LocalTrackingClient", "SyncTrackingClient", "TrackingClient"]
