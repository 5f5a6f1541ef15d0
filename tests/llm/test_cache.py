"""The call cache: keyed by the canonical request, JSON in the state's database."""

import asyncio
import sqlite3
import threading

import pytest
from fanwise.core.persistence import SQLitePersister
from fanwise.llm import CallCache, request_key

REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def test_a_second_identical_request_is_answered_from_the_cache(tmp_path):
    cache = CallCache(str(tmp_path / "state.sqlite"))
    calls = []

    def call():
        calls.append(1)
        return {"choices": [{"message": {"content": "hello"}}], "usage": {"total_tokens": 5}}

    first, hit = cache.call(REQUEST, call)
    assert not hit
    reordered = {"temperature": 0, "messages": REQUEST["messages"], "model": "m"}
    again, hit = cache.call(reordered, call)
    assert hit and again == first and len(calls) == 1
    assert (cache.hits, cache.misses) == (1, 1)
    # a new process (a new cache object on the same file) pays nothing either
    assert CallCache(str(tmp_path / "state.sqlite")).get(REQUEST) == first


def test_another_parameter_is_another_call(tmp_path):
    cache = CallCache(str(tmp_path / "c.sqlite"))
    cache.put(REQUEST, {"a": 1})
    assert cache.get({**REQUEST, "temperature": 0.7}) is None
    assert request_key(REQUEST) != request_key({**REQUEST, "temperature": 0.7})


def test_use_cache_false_calls_and_stores_nothing(tmp_path):
    cache = CallCache(str(tmp_path / "c.sqlite"))
    assert cache.call(REQUEST, lambda: {"a": 1}, use_cache=False) == ({"a": 1}, False)
    assert cache.get(REQUEST) is None


def test_the_cache_lives_in_the_persisters_database_as_json(tmp_path):
    path = str(tmp_path / "state.sqlite")
    cache = CallCache.beside(SQLitePersister(path))
    cache.put(REQUEST, {"a": 1})
    with sqlite3.connect(path) as connection:
        (request, response), = connection.execute(
            "SELECT request, response FROM fanwise_llm_calls").fetchall()
    assert response == '{"a": 1}' and '"model":"m"' in request


def test_concurrent_callers_of_one_request_make_one_call(tmp_path):
    cache = CallCache(str(tmp_path / "c.sqlite"))
    calls, gate = [], threading.Event()

    def call():
        calls.append(1)
        gate.wait(5)
        return {"a": 1}

    threads = [threading.Thread(target=cache.call, args=(REQUEST, call)) for _ in range(6)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and cache.hits == 5


def test_concurrent_coroutines_asking_one_request_make_one_call(tmp_path):
    cache = CallCache(str(tmp_path / "c.sqlite"))
    calls = []

    async def call():
        calls.append(1)
        await asyncio.sleep(0.05)
        return {"a": 1}

    async def main():
        return await asyncio.gather(*(cache.acall(REQUEST, call) for _ in range(6)))

    answers = asyncio.run(main())
    assert len(calls) == 1 and cache.hits == 5
    assert sorted(hit for _, hit in answers) == [False] + [True] * 5


def test_a_cached_null_answer_is_a_hit(tmp_path):
    cache = CallCache(str(tmp_path / "c.sqlite"))
    calls = []
    assert cache.call(REQUEST, lambda: calls.append(1)) == (None, False)
    assert cache.call(REQUEST, lambda: calls.append(1)) == (None, True)
    assert len(calls) == 1


def test_what_is_not_json_is_a_clear_error(tmp_path):
    cache = CallCache(str(tmp_path / "c.sqlite"))
    with pytest.raises(TypeError, match=r"\['client'\]"):
        cache.get({**REQUEST, "client": object()})
    with pytest.raises(TypeError, match="model_dump"):
        cache.put(REQUEST, object())
    with pytest.raises(TypeError, match="names no database"):
        CallCache.beside(object())


def test_a_postgres_cache_round_trips(postgres_table):
    dsn, table = postgres_table
    cache = CallCache(dsn, table=table)
    assert cache.call(REQUEST, lambda: {"a": [1, 2]}) == ({"a": [1, 2]}, False)
    assert CallCache(dsn, table=table).get(REQUEST) == {"a": [1, 2]}
