"""Tokenizers behind one small interface: the byte-level tokenizer of our models, and an adapter for
Hugging Face `tokenizer.json` files (via the `tokenizers` library) for imported models.

Torch-free: the ONNX runner uses this module as it is. A bundle stores `tokenizer.json`; `load_tokenizer`
tells the two kinds apart by the file's `"type"` field (ours says "omnicoder-byte").
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from omnicoder.errors import OmniCoderError

BYTE_TOKENIZER_TYPE = "omnicoder-byte"


class IncrementalDecoder(Protocol):
    def push(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int
    eos_id: int
    add_bos: bool  # whether a prompt starts with BOS (the model's own tokenizer adds one)
    stop_ids: list[int]  # every id that ends generation (EOS, end of turn, ...)
    chat_template: str | None  # Jinja chat template, when the model ships one

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def incremental_decoder(self) -> IncrementalDecoder: ...
    def to_json(self) -> str: ...


class _ByteIncrementalDecoder:
    """Turns byte ids into text as they arrive, holding back incomplete UTF-8 sequences."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if 0 <= token_id < 256:
            return self._decoder.decode(bytes((token_id,)))
        return ""

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


@dataclass(frozen=True)
class ByteTokenizer:
    """256 byte ids, then BOS/EOS/PAD and reserved ids up to `vocab_size`.

    Lossless for any Python string: text is encoded as UTF-8 with `surrogatepass`, so even lone
    surrogates round-trip.
    """

    vocab_size: int = 272
    bos_id: int = 256
    eos_id: int = 257
    pad_id: int = 258
    chat_template = None  # byte models are completion models (a class attribute, not a field)

    @property
    def add_bos(self) -> bool:
        return True  # our byte models are trained with BOS at the start of every document

    @property
    def stop_ids(self) -> list[int]:
        return [self.eos_id]

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8", errors="surrogatepass"))
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        data = bytes(i for i in ids if 0 <= i < 256)
        return data.decode("utf-8", errors="surrogatepass")

    def incremental_decoder(self) -> IncrementalDecoder:
        return _ByteIncrementalDecoder()

    def to_json(self) -> str:
        spec = {
            "type": BYTE_TOKENIZER_TYPE,
            "version": 1,
            "vocab_size": self.vocab_size,
            "byte_ids": [0, 256],
            "special_tokens": {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id},
        }
        return json.dumps(spec, indent=2) + "\n"


class _HFIncrementalDecoder:
    """Streams text from a subword tokenizer by decoding the growing id list and emitting the new suffix."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._emitted = ""

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._tok.decode(self._ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more tokens
            return ""
        new, self._emitted = text[len(self._emitted) :], text
        return new

    def flush(self) -> str:
        text = self._tok.decode(self._ids)
        new, self._emitted = text[len(self._emitted) :], text
        return new


class HFTokenizer:
    """Adapter over a Hugging Face `tokenizer.json` (BPE, Unigram, ...) with the same interface."""

    def __init__(
        self,
        json_text: str,
        bos_id: int,
        eos_id: int,
        add_bos: bool = True,
        stop_ids: list[int] | None = None,
        chat_template: str | None = None,
    ) -> None:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError:
            raise OmniCoderError(
                "this model uses a Hugging Face tokenizer.json; install the 'tokenizers' package"
            ) from None
        self._json = json_text
        self._tok = _Tok.from_str(json_text)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.set_fields(add_bos, stop_ids, chat_template)

    def set_fields(self, add_bos: bool, stop_ids: list[int] | None, chat_template: str | None) -> None:
        """What a checkpoint says about its tokenizer beyond tokenizer.json (hf: import reads it once the
        tokenizer exists, to look token texts up)."""
        self.add_bos = add_bos  # whether the model's own tokenizer starts a sequence with BOS
        self.stop_ids = sorted({self.eos_id, *(stop_ids or [])} - {-1})  # every id that ends generation
        self.chat_template = chat_template  # Jinja chat template, when the checkpoint ships one

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id >= 0 else list(ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def incremental_decoder(self) -> IncrementalDecoder:
        return _HFIncrementalDecoder(self)

    def token_text(self, token_id: int) -> str | None:
        """The vocabulary entry of an id (e.g. the BOS token's text for a chat template), None when out of range."""
        return self._tok.id_to_token(token_id) if token_id >= 0 else None

    def token_id(self, text: str) -> int | None:
        """The id of a vocabulary entry (e.g. a special token's text), None when there is none."""
        return self._tok.token_to_id(text)

    def to_json(self) -> str:
        """tokenizer.json's text, carrying add_bos, the stop ids and the chat template on to the bundle writer."""
        fields = {"add_bos": self.add_bos, "stop_ids": self.stop_ids, "chat_template": self.chat_template}
        return TokenizerFile(self._json, fields)


class TokenizerFile(str):
    """The text of a tokenizer.json, with the fields a bundle's manifest records beside it (`fields`: add_bos,
    stop_ids, chat_template). Exporters take `tokenizer.to_json()` and pass it on to the bundle writer as it is."""

    fields: dict

    def __new__(cls, text: str, fields: dict) -> TokenizerFile:
        made = super().__new__(cls, text)
        made.fields = dict(fields)
        return made


def tokenizer_from_json(
    text: str,
    bos_id: int = -1,
    eos_id: int = -1,
    add_bos: bool = True,
    stop_ids: list[int] | None = None,
    chat_template: str | None = None,
) -> Tokenizer:
    """Build a tokenizer from the text of a tokenizer.json (ours or Hugging Face's). add_bos, stop_ids and
    chat_template apply to Hugging Face tokenizers (a byte tokenizer always adds BOS and stops at EOS only)."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OmniCoderError(f"tokenizer.json is not valid JSON ({exc.msg}); re-export the model") from None
    if isinstance(spec, dict) and spec.get("type") == BYTE_TOKENIZER_TYPE:
        special = spec.get("special_tokens", {})
        return ByteTokenizer(
            vocab_size=int(spec["vocab_size"]),
            bos_id=int(special["bos"]),
            eos_id=int(special["eos"]),
            pad_id=int(special["pad"]),
        )
    return HFTokenizer(
        text, bos_id=bos_id, eos_id=eos_id, add_bos=add_bos, stop_ids=stop_ids, chat_template=chat_template
    )


def load_tokenizer(path: str | Path, bos_id: int = -1, eos_id: int = -1) -> Tokenizer:
    """Load `tokenizer.json` from a file or a directory that holds one."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        text = path.read_text()
    except OSError as exc:
        raise OmniCoderError(f"cannot read tokenizer {path}: {exc.strerror}") from None
    return tokenizer_from_json(text, bos_id=bos_id, eos_id=eos_id)
