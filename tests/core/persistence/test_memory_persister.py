import cloudpickle
from fanwise.core.persistence import InMemoryPersister
from fanwise.core.state import State


def test_copies_share_one_store():
    persister = InMemoryPersister()

    persister.copy().save("pk", "app", 0, "start", State({"a": 1}), "completed")

    assert persister.load("pk", "app")["state"] == State({"a": 1})


def test_pickled_persister_holds_a_snapshot_independent_of_the_original():
    persister = InMemoryPersister()
    persister.save("pk", "app", 0, "start", State({"a": 1}), "completed")

    revived = cloudpickle.loads(cloudpickle.dumps(persister))
    revived.save("pk", "app", 1, "next", State({"a": 2}), "completed")

    assert revived.load("pk", "app")["sequence_id"] == 1
    assert persister.load("pk", "app")["sequence_id"] == 0


def test_stored_state_is_detached_from_the_saved_objects():
    items = [1]
    persister = InMemoryPersister()
    persister.save("pk", "app", 0, "start", State({"items": items}), "completed")

    items.append(2)
    persister.load("pk", "app")["state"]["items"].append(3)

    assert persister.load("pk", "app")["state"] == State({"items": [1]})
