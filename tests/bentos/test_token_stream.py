"""A token stream alone: a byte-level vocabulary (characters split over tokens, as BPE does), stop strings
split across tokens, usage counts and the full-buffer signal."""

from __future__ import annotations

import asyncio

from bentos.dataplane.decode.streams import TokenStream

VOCAB = [b"h", b"\xc3", b"\xa9", b"llo", b" wor", b"ld", b"E", b"N", b"Dxyz", b"abc", b"x", b"<eos>"]
EOS = VOCAB.index(b"<eos>")


def ids(*pieces: bytes) -> list[int]:
    return [VOCAB.index(p) for p in pieces]


def decode(token_ids: list[int]) -> str:
    return b"".join(VOCAB[i] for i in token_ids).decode("utf-8", errors="replace")


def stream(**kw: object) -> TokenStream:
    args: dict[str, object] = {"prompt_tokens": 5, "max_tokens": 100, "eos_id": EOS, **kw}
    return TokenStream("r", decode, **args)  # type: ignore[arg-type]


def drain(s: TokenStream) -> list[str]:
    async def read() -> list[str]:
        out = []
        while (piece := await s.next_piece()) is not None:
            out.append(piece)
        return out

    return asyncio.run(read())


def test_a_character_split_over_tokens_is_sent_whole_and_never_as_a_replacement() -> None:
    s = stream()
    assert all(s.push(t) for t in ids(b"h", b"\xc3", b"\xa9", b"llo"))
    s.push(EOS)
    assert drain(s) == ["h", "é", "llo"] and s.text == "héllo" and s.finish_reason == "stop"


def test_a_stop_string_split_across_tokens_ends_the_text_before_it() -> None:
    s = stream(stop=["END"])
    assert s.push(ids(b"abc")[0]) and s.push(ids(b"E")[0]) and s.push(ids(b"N")[0])
    assert s.text == "abc"  # "EN" could still become "END": held back, not sent
    assert not s.push(ids(b"Dxyz")[0])  # the loop is told to drop the request
    assert drain(s) == ["abc"] and s.finish_reason == "stop" and s.usage.completion_tokens == 4


def test_text_held_back_for_a_stop_string_that_does_not_come_is_sent() -> None:
    s = stream(stop=["END"])
    for t in ids(b"abc", b"E", b"x"):
        s.push(t)
    s.push(EOS)
    assert drain(s) == ["abc", "Ex"]


def test_max_tokens_ends_with_length_and_usage_counts_prompt_and_completion() -> None:
    s = stream(max_tokens=3)
    assert s.push(ids(b"h")[0]) and s.push(ids(b"llo")[0])
    assert not s.push(ids(b" wor")[0])
    assert not s.push(ids(b"ld")[0])  # nothing after the end
    assert drain(s) == ["h", "llo", " wor"] and s.finish_reason == "length"
    assert (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.total_tokens) == (5, 3, 8)


def test_end_of_text_is_not_a_completion_token() -> None:
    s = stream()
    s.push(ids(b"abc")[0])
    s.push(EOS)
    assert s.usage.completion_tokens == 1 and s.finish_reason == "stop"
    assert s.ids == ids(b"abc") and s.written == [*ids(b"abc"), EOS]  # what a canary comparison judges


def test_a_stream_that_ends_at_once_has_written_its_end_of_text() -> None:
    """A canary that writes end-of-text first wrote something a comparison can find wrong (it used to be skipped:
    a rollout of such a canary waited for comparisons forever)."""
    s = stream()
    s.push(EOS)
    assert s.ids == [] and s.written == [EOS]
    cut = stream(max_tokens=1)
    cut.push(ids(b"abc")[0])
    assert cut.written == ids(b"abc")  # ended by length: no end-of-text was chosen


def test_a_full_buffer_tells_the_scheduler_to_skip_and_reading_clears_it() -> None:
    s = stream(buffer=2)
    for t in ids(b"h", b"llo"):
        s.push(t)
    assert s.full

    async def one() -> str | None:
        return await s.next_piece()

    assert asyncio.run(one()) == "h" and not s.full


def test_an_abort_wakes_a_waiting_reader() -> None:
    s = stream()

    async def scenario() -> tuple[str | None, str | None]:
        reader = asyncio.ensure_future(s.next_piece())
        await asyncio.sleep(0.01)
        s.push(ids(b"abc")[0])
        first = await reader
        reader = asyncio.ensure_future(s.next_piece())
        await asyncio.sleep(0.01)
        s.abort()
        return first, await asyncio.wait_for(reader, 1)

    assert asyncio.run(scenario()) == ("abc", None) and s.finish_reason == "abort"


def _tokenizers(tmp_path) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """A byte-level BPE (GPT-2's kind, as models/tiny_lm.py trains) and a SentencePiece-like one (Metaspace:
    a leading space that the first token of a text loses when decoded), trained on text with multi-byte
    characters so that tokens split them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = ["Café crème, naïve façade 😀 — ünïcödé everywhere: ça va? Ελληνικά 日本語 text 🚀🚀."] * 50
    made = {}
    for name, pre, dec in (("byte-level", pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()),
                           ("metaspace", pre_tokenizers.Metaspace(), decoders.Metaspace())):
        tok = Tokenizer(models.BPE(byte_fallback=name == "metaspace"))
        tok.pre_tokenizer, tok.decoder = pre, dec
        alphabet = pre_tokenizers.ByteLevel.alphabet() if name == "byte-level" else []
        tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet))
        made[name] = tok
    return made


def test_the_text_decoded_incrementally_is_the_text_decoded_whole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import random

    for name, tok in _tokenizers(tmp_path).items():
        def decode(token_ids: list[int], tok=tok) -> str:  # type: ignore[no-untyped-def]
            return str(tok.decode(token_ids))  # type: ignore[attr-defined]

        rng = random.Random(5)
        vocab = tok.get_vocab_size()  # type: ignore[attr-defined]
        for _ in range(30):  # random token sequences split characters anywhere, and in any order
            s = TokenStream("r", decode, prompt_tokens=1, max_tokens=1000)
            for _ in range(60):
                s.push(rng.randrange(vocab))
                assert s._text() == decode(s.ids), (name, s.ids)
