"""`Function` and `Reducer`: the computing and the updating half of an action (Burr's
names). Conditions are Functions too, so these live apart from the actions."""

from __future__ import annotations

import abc
import inspect
from typing import Any

from fanwise.core.errors import InputError
from fanwise.core.state import State


class Function(abc.ABC):
    """The computing half of an action: reads fields of the state, returns a result dict."""

    @property
    @abc.abstractmethod
    def reads(self) -> list[str]: ...

    @abc.abstractmethod
    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        """Compute a result from the state and inputs."""

    @property
    def inputs(self) -> list[str] | tuple[list[str], list[str]]:
        """Inputs the caller must provide; or, as Burr allows, `(required, optional)`."""
        return []

    @property
    def optional_inputs(self) -> list[str]:
        """Inputs the caller may provide (besides the optional half of a tuple `inputs`)."""
        return []

    @property
    def input_spec(self) -> tuple[list[str], list[str]]:
        """`(required, optional)` input names, whichever way `inputs` declares them."""
        declared = self.inputs
        if isinstance(declared, tuple):
            required, optional = declared
            return list(required), [*optional, *self.optional_inputs]
        return list(declared), list(self.optional_inputs)

    @property
    def optional_and_required_inputs(self) -> tuple[set[str], set[str]]:
        """Burr's `(required, optional)` as sets."""
        required, optional = self.input_spec
        return set(required), set(optional)

    def validate_inputs(self, inputs: dict[str, Any] | None) -> None:
        """Raise an `InputError` (a `ValueError`) naming missing or undeclared inputs."""
        required, optional = self.input_spec
        given = set(inputs or {})
        missing = [k for k in required if k not in given]
        extra = sorted(given - set(required) - set(optional))
        if missing or extra:
            raise InputError(
                f"inputs to {self!r} are invalid: missing {missing}, undeclared {extra}"
            )

    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.run)


class Reducer(abc.ABC):
    """The updating half of an action: folds a result into the state, writing `writes`."""

    @property
    @abc.abstractmethod
    def writes(self) -> list[str]: ...

    @abc.abstractmethod
    def update(self, result: dict[str, Any], state: State) -> State:
        """Fold the result into the state."""
