"""What fencing costs a write: µs per `save` of one step row, fenced by a held lease (its
generation checked in the writing statement) or not, from 1 thread and from 8 threads at
once (on PostgreSQL the fenced statement takes a share lock on the one lease row, so
concurrent writers meet there), with SQLite and PostgreSQL.

    .venv/bin/python benchmarks/lease_fencing.py [--writes N] [--rounds R] [--skip-postgres]
                                                 [--dsn DSN]

Fenced and unfenced batches take turns on one store, and the medians are compared, so that
the load of a shared machine weighs on both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fanwise.core import State
from fanwise.core.persistence import SQLitePersister

THREADS = (1, 8)


def timed_saves(saver: Any, writes: int, threads: int, batch: str) -> float:
    """Seconds for `writes` single-row saves spread over `threads` threads (new rows: the
    app ids name `batch`, so that no two batches write the same row)."""
    state = State({"x": 1, "text": "a" * 100})

    def write(worker: int) -> None:
        for i in range(writes // threads):
            saver.save(None, f"child-{batch}-{worker}", i, "step", state, "completed")

    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        list(pool.map(write, range(threads)))
        return time.perf_counter() - started


def measure(make: Callable[[], Any], writes: int, rounds: int) -> dict[tuple[str, int], float]:
    """Median µs per write by (fenced or not, threads): batches of `writes` saves, fenced
    and unfenced in turn on one store, `rounds` of each, each first in half the turns
    (taking turns spreads the load of a shared machine evenly over both)."""
    found: dict[tuple[str, int], list[float]] = {}
    for threads in THREADS:
        persister = make()
        persister.initialize()
        lease = persister.acquire_lease(None, f"parent-{uuid.uuid4().hex}")
        savers = {"unfenced": persister, "fenced": lease.store}
        for batch in range(rounds):
            # which goes first alternates: the second batch of a turn is the slower one
            # (it meets the first one's WAL checkpoint or dirty pages)
            turn = list(savers.items())[:: 1 if batch % 2 else -1]
            for kind, saver in turn:
                seconds = timed_saves(saver, writes, threads, f"{kind}-{batch}")
                found.setdefault((kind, threads), []).append(seconds / writes * 1e6)
        lease.release()
    return {key: statistics.median(values) for key, values in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="fanwise-fencing-") as workdir:

        def sqlite() -> Any:
            return SQLitePersister(os.path.join(workdir, f"{uuid.uuid4().hex}.sqlite"))

        results["sqlite"] = measure(sqlite, args.writes, args.rounds)
    if not args.skip_postgres:
        import psycopg
        from fanwise.core.persistence import PostgreSQLPersister

        tables: list[str] = []
        made: list[Any] = []

        def postgres() -> Any:
            tables.append(f"fanwise_bench_{uuid.uuid4().hex[:12]}")
            made.append(PostgreSQLPersister(args.dsn, table_name=tables[-1]))
            return made[-1]

        try:
            results["postgres"] = measure(postgres, args.writes, args.rounds)
        finally:
            for persister in made:
                persister.close()
            with psycopg.connect(args.dsn, autocommit=True) as connection:
                for table in tables:
                    connection.execute(f'DROP TABLE IF EXISTS "{table}", "{table}_lease"')
    print(f"single-row saves, median of {args.rounds} batches of {args.writes:,}: µs per write")
    print()
    print(f"{'store':<9} {'threads':>7} {'unfenced':>9} {'fenced':>9} {'cost':>8}")
    for store, best in results.items():
        for threads in THREADS:
            plain, fenced = best[("unfenced", threads)], best[("fenced", threads)]
            print(f"{store:<9} {threads:>7} {plain:>9.1f} {fenced:>9.1f} "
                  f"{(fenced - plain) / plain:>+8.0%}")


if __name__ == "__main__":
    main()
