import pickle

import cloudpickle
import pytest
from fanwise.core import Secret, State, StateSerialisationError
from fanwise.core.persistence import InMemoryPersister


def test_a_secret_shows_stars_wherever_it_is_printed():
    secret = Secret("sk-live-123")

    assert repr(secret) == str(secret) == f"{secret}" == "Secret(***)"
    assert "sk-live" not in repr({"key": secret, "keys": [secret]})
    assert secret.get() == "sk-live-123"


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_a_secret_keeps_its_value_when_shipped_to_another_process(dumps):
    assert pickle.loads(dumps(Secret({"user": "u", "password": "p"}))).get() == {
        "user": "u", "password": "p"
    }


@pytest.mark.parametrize(
    ("state", "where"),
    [({"key": Secret("x")}, "key"), ({"conf": {"db": [1, Secret("x")]}}, r"conf\['db'\]\[1\]")],
)
def test_a_persister_refuses_a_secret_in_state_naming_the_field_and_writes_nothing(state, where):
    persister = InMemoryPersister()

    with pytest.raises(StateSerialisationError, match=rf"app 'app'.*Secret \(at {where}\).*input"):
        persister.save(None, "app", 0, "start", State(state), "completed")

    assert persister.load(None, "app") is None
