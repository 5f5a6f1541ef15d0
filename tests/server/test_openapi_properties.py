"""Property-based API tests: schemathesis generates requests from the generated OpenAPI
schema (bounded examples per operation) and checks every answer against it: documented
status codes and content types, response bodies matching their schemas, no server error
other than the documented 500 of a raising action."""

from __future__ import annotations

import os
import tempfile

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("sse_starlette")

from fanwise.server import create_app  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from server_apps import counter  # noqa: E402

EXAMPLES = 25
"""Per operation: the seven operations take about 15 s on a shared 2-core machine."""

# schemathesis collects its cases from a schema made at import (its fixture loader does
# not work with this pytest); the database is a fresh file of this test session
_DB = os.path.join(tempfile.mkdtemp(prefix="fanwise-openapi-"), "server.db")
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(counter(_DB), halt_before=["add"], halt_after=["finish"]))


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_every_answer_conforms_to_the_openapi_schema(case: object) -> None:
    case.call_and_validate()
