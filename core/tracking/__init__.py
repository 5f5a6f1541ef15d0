"""Step-by-step records of applications, readable back as a state loader."""

from fanwise.core.tracking.local import LocalTrackingClient

__all__ = ["LocalTrackingClient"]
