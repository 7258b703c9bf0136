import numpy as np
import pytest

from seqkv.errors import InvalidInputError, SessionNotFoundError
from seqkv.gateway.schedule import Schedule
from seqkv.gateway.sessions import EXACT, ConversationStore

V = 49152


def _add(store, parent, tokens, node_id):
    sched = Schedule().after_request(0, len(tokens) - 1, 1)
    return store.add(parent, np.asarray(tokens, np.uint32), messages=[{"role": "user", "content": node_id}],
                     output_text=node_id, schedule=sched, engine=None, kv_sha256="h-" + node_id, lineage=EXACT,
                     node_id=node_id)


@pytest.fixture
def store(tmp_path):
    s = ConversationStore(str(tmp_path / "g.sqlite"), V)
    yield s
    s.close()


def test_branches_share_their_parent_and_survive_reopening(tmp_path):
    path = str(tmp_path / "g.sqlite")
    store = ConversationStore(path, V)
    rng = np.random.default_rng(0)
    root = rng.integers(0, V, 300).tolist()
    _add(store, None, root, "a")
    _add(store, "a", root + [1, 2, 3], "b")
    _add(store, "a", root + [4, 5], "c")
    coded = {n: len(store.backend.get("node:" + n).container) for n in "ab"}
    assert coded["b"] < coded["a"] / 4  # only the branch's own tokens are coded
    store.close()
    again = ConversationStore(path, V)
    assert again.tokens("b").tolist() == root + [1, 2, 3]
    assert again.tokens("c").tolist() == root + [4, 5]
    assert [n.id for n in again.chain("c")] == ["a", "c"]
    assert [m["content"] for m in again.messages("b")] == ["a", "b"]
    assert again.node("b").kv_sha256 == "h-b"
    again.close()


def test_a_node_must_extend_its_parent(store):
    _add(store, None, [1, 2, 3], "a")
    with pytest.raises(InvalidInputError):
        _add(store, "a", [1, 9, 3, 4], "b")


def test_deleting_a_parent_hides_it_until_its_last_child_goes(store):
    _add(store, None, [1, 2, 3], "a")
    _add(store, "a", [1, 2, 3, 4], "b")
    store.delete("a")
    with pytest.raises(SessionNotFoundError):
        store.node("a")
    assert store.tokens("b").tolist() == [1, 2, 3, 4]  # still decodable through the hidden parent
    store.delete("b")
    assert store.stats()["nodes"] == 0
    with pytest.raises(SessionNotFoundError):
        store.delete("b")


def test_chat_sessions_point_at_their_newest_turn(store):
    _add(store, None, [1, 2], "t1")
    _add(store, "t1", [1, 2, 3, 4], "t2")
    store.set_chat_head("chat1", "t2")
    assert store.chat_head("chat1") == "t2"
    store.delete_chat("chat1")
    assert store.stats() == {"nodes": 0, "chat_sessions": 0}
    with pytest.raises(SessionNotFoundError):
        store.chat_head("chat1")
    with pytest.raises(InvalidInputError):
        store.chat_head("a/b")
