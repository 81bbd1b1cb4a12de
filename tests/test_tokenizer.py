from hypothesis import given, settings
from hypothesis import strategies as st

from omnicoder.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer, tokenizer_from_json

TOK = ByteTokenizer()


@given(st.text())
@settings(max_examples=300)
def test_byte_round_trip_any_text(text):
    ids = TOK.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert TOK.decode(ids) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_incremental_decoder_matches_decode(text):
    decoder = TOK.incremental_decoder()
    streamed = "".join(decoder.push(i) for i in TOK.encode(text, add_bos=True)) + decoder.flush()
    assert streamed == text


def test_lone_surrogates_round_trip():
    text = "a\ud800b\udfff"
    assert TOK.decode(TOK.encode(text)) == text


def test_special_ids():
    ids = TOK.encode("hi", add_bos=True)
    assert ids == [TOK.bos_id, ord("h"), ord("i")]
    assert TOK.decode([*ids, TOK.eos_id, TOK.pad_id]) == "hi"


def test_tokenizer_json_round_trip(tmp_path):
    (tmp_path / "tokenizer.json").write_text(TOK.to_json())
    assert load_tokenizer(tmp_path) == TOK


def test_hf_tokenizer_adapter(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["def add(a, b):\n    return a + b\n"] * 50, trainer)
    adapter = tokenizer_from_json(tok.to_str(), bos_id=0, eos_id=1)
    assert isinstance(adapter, HFTokenizer)
    text = "def add(x, y):\n    return x + y  # é\n"
    ids = adapter.encode(text, add_bos=True)
    assert ids[0] == 0 and adapter.decode(ids) == text
    decoder = adapter.incremental_decoder()
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == text
