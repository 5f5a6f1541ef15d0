"""Group commit: a final state the store cannot encode names its child."""

import threading

import pytest
from fanwise.core import State, serde
from fanwise.core.errors import StateSerialisationError
from fanwise.core.persistence.base import SaveRow
from fanwise.parallel._commit import GroupCommit


class EncodingSaver:
    """A store without a stored form of its own: it encodes each row when it saves it."""

    def __init__(self):
        self.saved = []

    def save_many(self, rows):
        texts = [serde.dumps_state(row["state"]) for row in rows]
        self.saved += texts


def row(app_id, state):
    return SaveRow(partition_key=None, app_id=app_id, sequence_id=0, position="step",
                   state=State(state), status="completed")


def test_a_final_state_that_cannot_be_encoded_names_its_child():
    commit = GroupCommit(tracker=None)
    saver = EncodingSaver()
    commit.add(saver, row("fine", {"x": 1}), 3, None)
    commit.add(saver, row("locked", {"guard": threading.Lock()}), 7, None)

    with pytest.raises(StateSerialisationError) as caught:
        list(commit.commit())

    message = str(caught.value)
    assert message.startswith("cannot save the final state of child 7: ")
    assert "state field 'guard'" in message
    assert saver.saved == []
