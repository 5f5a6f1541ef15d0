"""Budgets: rates and calls in flight shared by threads, event loops and processes.

Rate checks are lower bounds on time (a budget may never admit more than its rate; a
loaded machine only makes runs slower), or deterministic steps of the store."""

import asyncio
import multiprocessing
import os
import pickle
import sqlite3
import threading
import time

import pytest
from fanwise.llm import Budget, CallCache
from fanwise.llm._slots import SharedSlots
from fanwise.llm._stores import PostgresStateStore, SQLiteStateStore
from pyrate_limiter import GCRA, Duration, Rate

SIXTY_A_SECOND = Rate(60, Duration.SECOND, burst=3)


def _admitted(store, times, weight=1):
    return [store.check(GCRA(), [SIXTY_A_SECOND], t, weight).allowed for t in times]


def test_a_sqlite_store_admits_the_burst_then_one_per_emission_interval(tmp_path):
    store = SQLiteStateStore(str(tmp_path / "b.sqlite"), "k")
    # 60/s: one unit per 1000/60 ms; a burst of 3 at t=0, then refused until it refills
    assert _admitted(store, [0, 0, 0, 0]) == [True, True, True, False]
    assert _admitted(store, [17, 18, 34, 51]) == [True, False, True, True]


def test_two_store_objects_on_one_file_share_the_state(tmp_path):
    path = str(tmp_path / "b.sqlite")
    first, second = SQLiteStateStore(path, "k"), pickle.loads(pickle.dumps(
        SQLiteStateStore(path, "k")))
    assert _admitted(first, [0, 0]) == [True, True]
    assert _admitted(second, [0, 0]) == [True, False]
    other_key = SQLiteStateStore(path, "other")
    assert _admitted(other_key, [0]) == [True]


def test_a_postgres_store_steps_one_state_for_every_connection(postgres_table):
    dsn, postgres_table = postgres_table
    first = PostgresStateStore(dsn, "k", postgres_table)
    second = PostgresStateStore(dsn, "k", postgres_table)
    rate = Rate(1, Duration.HOUR, burst=2)  # the server's clock: nothing refills meanwhile
    decisions = [s.check(GCRA(), [rate], 0, 1).allowed for s in (first, second, first)]
    assert decisions == [True, True, False]


def test_threads_never_get_more_than_the_request_rate():
    budget = Budget(requests_per_minute=600, burst_seconds=1.0)  # 10/s, a burst of 10
    started = time.monotonic()

    def calls():
        for _ in range(5):
            with budget.acquire():
                pass

    threads = [threading.Thread(target=calls) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 30 requests: 10 at once, then 20 at 10/s
    assert time.monotonic() - started >= 1.9


def test_calls_in_flight_never_exceed_max_in_flight():
    budget = Budget(max_in_flight=3)
    lock, now, peak = threading.Lock(), [0], [0]

    def call():
        with budget.acquire():
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            time.sleep(0.01)
            with lock:
                now[0] -= 1

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 3


def _peak_in_flight(take, give_back, threads=8, calls=30):
    lock, now, peak = threading.Lock(), [0], [0]

    def call():
        for _ in range(calls):
            holder = take()
            try:
                with lock:
                    now[0] += 1
                    peak[0] = max(peak[0], now[0])
                time.sleep(0.002)
                with lock:
                    now[0] -= 1
            finally:
                give_back(holder)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return peak[0]


def test_calls_in_flight_on_postgres_never_exceed_max_in_flight(postgres_table):
    dsn, table = postgres_table
    slots = SharedSlots(dsn, "k", 2, 60.0, table=f"{table}_slots")
    slots.give_back(slots.take())  # the table exists before the threads compete
    # a taker that waited on another's row lock must not take the slot it just lost
    assert _peak_in_flight(slots.take, slots.give_back) == 2


def test_tables_on_postgres_are_created_by_many_first_users_at_once(postgres_table):
    dsn, table = postgres_table
    start, errors = threading.Barrier(6), []
    rate = Rate(1, Duration.HOUR, burst=100)

    def first_use(what):
        start.wait()
        try:
            if what == "slots":
                slots = SharedSlots(dsn, "k", 3, 60.0, table=f"{table}_slots")
                slots.give_back(slots.take())
            elif what == "state":
                PostgresStateStore(dsn, "k", table).check(GCRA(), [rate], 0, 1)
            else:
                CallCache(dsn, table=f"{table}_calls").get({"model": "m"})
        except Exception as exc:  # noqa: BLE001 - each first user's error is the finding
            errors.append(exc)

    workers = [threading.Thread(target=first_use, args=(what,))
               for what in ("slots", "state", "calls") * 2]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {table}_calls")
    assert errors == []


def test_tokens_beyond_the_estimate_are_charged_when_settled():
    budget = Budget(tokens_per_minute=6000, burst_seconds=1.0)  # 100 tokens/s, burst 100
    with budget.acquire(tokens=100) as grant:  # the burst: no wait
        assert grant.waited < 0.5
        grant.settle(150)  # 50 more: half a second's worth of tokens
    assert grant.charged_tokens == 150 and grant.waited >= 0.45
    with pytest.raises(RuntimeError, match="settled already"):
        grant.settle(10)


def test_an_estimate_larger_than_the_burst_is_admitted_in_pieces():
    budget = Budget(tokens_per_minute=6000, burst_seconds=0.5)  # burst of 50 tokens
    started = time.monotonic()
    with budget.acquire(tokens=120):  # 50 now, 70 more at 100/s
        pass
    assert time.monotonic() - started >= 0.65


def test_async_callers_wait_without_blocking_the_loop():
    budget = Budget(requests_per_minute=600, max_in_flight=2, burst_seconds=0.1)
    ticks = []

    async def ticker():
        for _ in range(20):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def call():
        async with budget.aacquire():
            await asyncio.sleep(0.01)

    async def main():
        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(call() for _ in range(8)))
        await tick

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started >= 0.65  # 8 requests at 10/s after a burst of 1
    assert len(ticks) == 20  # the loop kept running while callers waited


@pytest.mark.parametrize("limits", [{"requests_per_minute": 60000}, {"max_in_flight": 2}])
def test_an_async_caller_waiting_for_a_locked_sqlite_store_leaves_the_loop_running(
        tmp_path, limits):
    path = str(tmp_path / "budget.sqlite")
    budget = Budget(store=path, **limits)
    ticked_meanwhile = threading.Event()

    def hold_the_write_lock(locked):
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        locked.set()
        ticked_meanwhile.wait(10)  # released once the loop has run meanwhile, else late
        connection.execute("COMMIT")
        connection.close()

    async def main():
        async with budget.aacquire():  # its tables exist
            pass
        locked = threading.Event()
        holder = threading.Thread(target=hold_the_write_lock, args=(locked,))
        holder.start()
        await asyncio.to_thread(locked.wait, 10)
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1
                if ticks == 3:
                    ticked_meanwhile.set()

        ticking = asyncio.create_task(tick())
        async with budget.aacquire():
            seen = ticks
        ticking.cancel()
        await asyncio.to_thread(holder.join)
        return seen

    assert asyncio.run(main()) >= 3


def test_async_callers_cancelled_anywhere_leave_no_shared_slot_taken(tmp_path):
    path = str(tmp_path / "budget.sqlite")
    budget = Budget(max_in_flight=2, requests_per_minute=600000, store=path)

    async def call():
        async with budget.aacquire():
            await asyncio.sleep(0.003)

    async def main():
        for round_ in range(20):
            tasks = [asyncio.create_task(call()) for _ in range(10)]
            await asyncio.sleep(round_ * 0.0005)  # cancelled waiting, taking or holding
            for task in tasks[::2]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        async with asyncio.timeout(10):  # both slots free again: two callers at once
            async with budget.aacquire(), budget.aacquire():
                pass

    asyncio.run(main())


def _processes_share(path, results):
    budget = pickle.loads(path)
    threads_done = []

    def calls():
        for _ in range(10):
            with budget.acquire():
                pass
        threads_done.append(1)

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((os.getpid(), len(threads_done)))


def test_processes_share_a_budget_kept_in_a_sqlite_file(tmp_path):
    budget = Budget(requests_per_minute=3000, store=str(tmp_path / "budget.sqlite"),
                    burst_seconds=0.2)  # 50/s, a burst of 10
    shipped = pickle.dumps(budget)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    started = time.monotonic()
    workers = [context.Process(target=_processes_share, args=(shipped, results))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    elapsed = time.monotonic() - started
    assert sorted(results.get()[1] for _ in workers) == [4, 4, 4]
    # 120 requests over three processes: 10 at once, 110 at 50/s (not 3 x 50/s)
    assert elapsed >= 2.1


def test_a_memory_budget_refuses_to_travel_and_names_what_to_use():
    with pytest.raises(TypeError, match="store='<file>.sqlite'"):
        pickle.dumps(Budget(requests_per_minute=60))


@pytest.mark.parametrize("settings, message", [
    ({}, "needs requests_per_minute"),
    ({"requests_per_minute": 0}, "requests_per_minute must be at least 1"),
    ({"max_in_flight": 0}, "max_in_flight must be an int >= 1"),
    ({"max_in_flight": 2, "burst_seconds": 0}, "burst_seconds must be > 0"),
])
def test_bad_settings_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        Budget(**settings)


def test_a_bad_estimate_is_a_clear_error():
    with pytest.raises(ValueError, match="tokens must be an int >= 0"), \
            Budget(tokens_per_minute=60).acquire(tokens=-1):
        pass


@pytest.mark.parametrize("dsn", ["postgresql://me:s3cret@db.example/x",
                                 "postgresql://db.example/x?user=me&password=s3cret"])
def test_a_repr_never_shows_a_password(dsn):
    assert "s3cret" not in repr(Budget(max_in_flight=1, store=dsn))
    assert "s3cret" not in repr(CallCache(dsn))
    assert "db.example/x" in repr(Budget(max_in_flight=1, store=dsn))


def test_a_fractional_rate_is_not_rounded_up():
    from fanwise.llm._stores import wall_ms

    budget = Budget(requests_per_minute=1.5)  # one request per 40 s
    store, rate = budget._request_store, budget._requests
    now = wall_ms()
    first = store.check(budget._algorithm, [rate], now, 1).retry_after_ms
    second = store.check(budget._algorithm, [rate], now, 1).retry_after_ms
    assert first == 0 and 39_900 <= second <= 40_100
