"""Step-by-step records of applications, readable back as a state loader (Burr's
`burr.tracking`)."""

from fanwise.core.tracking.base import SyncTrackingClient, TrackingClient
from fanwise.core.tracking.local import LocalTrackingClient

__all__ = ["LocalTrackingClient", "SyncTrackingClient", "TrackingClient"]
