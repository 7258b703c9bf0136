from seqkv.gateway.record import Message
from seqkv.gateway.service import message_spans

TEXT = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
PIECES = [b"<|im_start|>", b"user", b"\n", b"Hello", b" there", b"<|im_end|>", b"\n", b"<|im_start|>", b"assistant",
          b"\n"]


def test_a_message_is_the_span_of_tokens_that_spells_its_content():
    out = message_spans(TEXT, PIECES, [{"role": "user", "content": "Hello there"}], base=100)
    assert out == (Message("user", span=(103, 105)),)
    # an occurrence that is not on token boundaries is skipped for one that is
    out = message_spans(TEXT, PIECES, [{"role": "user", "content": "user"}], base=0)
    assert out == (Message("user", span=(1, 2)),)


def test_content_the_tokens_do_not_spell_is_kept_as_text():
    # a token across the content's edge, content the template rewrote, pieces that are not the text
    assert message_spans(TEXT, PIECES, [{"role": "user", "content": "ello there"}], 0) == (
        Message("user", text="ello there"),)
    assert message_spans(TEXT, PIECES, [{"role": "user", "content": "HELLO"}], 0) == (Message("user", text="HELLO"),)
    assert message_spans(TEXT, PIECES[:-1], [{"role": "user", "content": "Hello there"}], 0) == (
        Message("user", text="Hello there"),)


def test_multibyte_pieces_are_bytes():
    text = "日本 語"
    pieces = ["日本".encode()[:2], "日本".encode()[2:], " 語".encode()]
    assert message_spans(text, pieces, [{"role": "user", "content": "日本"}], 0) == (Message("user", span=(0, 2)),)
