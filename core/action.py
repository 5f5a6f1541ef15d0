"""`burr.core.action` under its fanwise name: Burr programs import actions, their streaming
kinds and conditions from this one module (they live in `actions`, `streaming` and
`conditions` here; `fanwise.core.actions` exports the same names)."""

from fanwise.core import actions as _actions
from fanwise.core.actions import *  # noqa: F403

__all__ = list(_actions.__all__)
