"""What may be shown of a PostgreSQL connection string: never its password."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

_PASSWORD_PAIR = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redacted(dsn: str) -> str:
    """`dsn` with its password (in the URL's user info, a `password=` query parameter or a
    `password=` keyword) replaced by `***`; everything else as given."""
    if "://" not in dsn:
        return _PASSWORD_PAIR.sub(rf"\g<1>{MASK}", dsn)
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        user_info, _, hosts = netloc.rpartition("@")
        user, has_password, _ = user_info.partition(":")
        netloc = f"{user}:{MASK}@{hosts}" if has_password else netloc
    query = urlencode(
        [(key, MASK if key == "password" else value) for key, value in parse_qsl(parts.query)],
        safe="*",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def password_of(dsn: str) -> str | None:
    """The password written in `dsn`, if any (libpq may still find one in the environment)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(dsn).get("password") or None
    except Exception:  # an unparsable dsn: nothing can be found in it
        return None


def redacted_text(text: str, dsn: str) -> str:
    """`text` (an error message of the driver) with the password of `dsn` masked."""
    password = password_of(dsn)
    return text.replace(password, MASK) if password else text


def server_of(dsn: str) -> str:
    """`host:port/dbname` of `dsn`, with libpq's environment defaults for what it omits."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "(unparsable dsn)"
    if "service" in params and "host" not in params:
        return f"service {params['service']!r}"
    host = params.get("host") or os.environ.get("PGHOST", "localhost")
    port = params.get("port") or os.environ.get("PGPORT", "5432")
    dbname = params.get("dbname") or os.environ.get("PGDATABASE", "")
    return f"{host}:{port}/{dbname}"
