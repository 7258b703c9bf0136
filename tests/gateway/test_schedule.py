import pytest

from seqkv.errors import InvalidInputError
from seqkv.gateway.schedule import PREFILL, STEPS, EngineConfig, Schedule, Segment


def test_a_turn_is_a_prefill_then_steps_for_every_token_but_the_last():
    s = Schedule().after_request(n_past=0, n_prompt=10, n_generated=4)
    assert s.segments == (Segment(PREFILL, 0, 10), Segment(STEPS, 10, 13))
    assert s.cached == 13
    assert list(s.replay_prompts()) == [10, 11, 12, 13]


def test_a_second_turn_continues_from_what_the_slot_reused():
    s = Schedule().after_request(0, 10, 4).after_request(n_past=13, n_prompt=20, n_generated=1)
    assert s.segments[-1] == Segment(PREFILL, 13, 20)
    assert s.cached == 20 and not s.clipped
    assert list(s.replay_prompts()) == [10, 11, 12, 13, 20]


def test_a_full_cache_hit_re_evaluates_the_last_token_alone():
    # the server reuses n-1 tokens when the prompt is exactly what the slot holds
    s = Schedule().after_request(0, 10, 4).after_request(n_past=12, n_prompt=13, n_generated=2)
    assert s.segments == (Segment(PREFILL, 0, 10), Segment(STEPS, 10, 12), Segment(PREFILL, 12, 13),
                          Segment(STEPS, 13, 14))
    assert not s.clipped
    assert list(s.replay_prompts()) == [10, 11, 12, 13, 14]


def test_cutting_a_prefill_short_is_marked_clipped():
    s = Schedule().after_request(0, 10, 1).after_request(n_past=5, n_prompt=8, n_generated=1)
    assert s.clipped
    assert s.segments == (Segment(PREFILL, 0, 5), Segment(PREFILL, 5, 8))
    steps = Schedule().after_request(0, 4, 8).after_request(n_past=6, n_prompt=9, n_generated=1)
    assert not steps.clipped  # one-token steps cut anywhere are still exactly replayable


def test_json_round_trip_and_bad_input():
    s = Schedule().after_request(0, 10, 4).after_request(5, 9, 1)
    assert Schedule.from_json(s.to_json()) == s
    with pytest.raises(InvalidInputError):
        Schedule().after_request(n_past=3, n_prompt=10, n_generated=1)  # reuses more than held
    with pytest.raises(InvalidInputError):
        Schedule().after_request(n_past=0, n_prompt=0, n_generated=1)
    with pytest.raises(InvalidInputError):
        Schedule.from_json({"segments": [["bogus", 0, 3]]})


def test_engine_config_mismatches_ignore_the_context_size():
    a = EngineConfig("b1", "m:1", 2048, 512, 2, 2, "f16", "f16", "off", 4096)
    b = EngineConfig("b1", "m:1", 2048, 512, 4, 4, "f16", "f16", "off", 8192)
    assert a.mismatches(b) == ["threads", "threads_batch"]
    assert EngineConfig.from_json(a.to_json()) == a
    with pytest.raises(InvalidInputError):
        EngineConfig.from_json({"build": "x"})
