import pytest

from seqkv.errors import InvalidInputError

pytestmark = pytest.mark.model


def _prompt(tok, text):
    import torch

    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt")
    return ids if torch.is_tensor(ids) else ids["input_ids"]


def test_a_restored_tracked_cache_continues_generate_exactly(smollm2):
    import torch

    from seqkv import SessionStore
    from seqkv.integrations import transformers as hf
    from seqkv.integrations.tracked_cache import TrackedCache, get_cache, put_cache

    model, tok = smollm2
    cache = TrackedCache(model)
    out = model.generate(_prompt(tok, "What is the capital of France?"), past_key_values=cache, max_new_tokens=8,
                         do_sample=False)
    n = cache.get_seq_length()
    assert cache.token_ids == out[0].tolist()[:n]  # every evaluated token, the last sampled one excepted
    assert cache.schedule[0] > 1 and set(cache.schedule[1:]) == {1}  # a prefill, then one-token steps

    # the schedule is what makes the bits: one prefill of the same tokens gives other KV
    one_prefill, _ = hf.compute_cache(model, cache.token_ids, None)
    assert hf.layer_hashes(one_prefill) != hf.layer_hashes(cache)

    store = SessionStore(model, codec="plt", engine=False)  # TrackedCache holds transformers KV
    put_cache(store, "chat", cache)
    restored = get_cache(store, "chat", model, schedule=cache.schedule)
    assert hf.layer_hashes(restored) == hf.layer_hashes(cache)
    assert restored.token_ids == cache.token_ids

    follow = torch.cat([out, tok(" And of Italy?", return_tensors="pt").input_ids], dim=1)
    resumed = model.generate(follow, past_key_values=restored, max_new_tokens=8, do_sample=False)
    uninterrupted = model.generate(follow, past_key_values=cache, max_new_tokens=8, do_sample=False)
    assert resumed.tolist() == uninterrupted.tolist()
    assert restored.token_ids == cache.token_ids and restored.schedule == cache.schedule


def test_a_tracked_cache_refuses_untracked_input(smollm2):
    from seqkv.integrations.tracked_cache import TrackedCache, put_cache

    model, _ = smollm2
    with pytest.raises(InvalidInputError):
        TrackedCache(model, token_ids=[1, 2, 3], schedule=[2])
    with pytest.raises(InvalidInputError):
        put_cache(object(), "x", object())
