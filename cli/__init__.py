"""fanwise.cli: the `fanwise` console script (`fanwise --help`)."""

from fanwise.cli.main import main

__all__ = ["main"]
