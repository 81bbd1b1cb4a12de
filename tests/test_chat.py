"""--chat: chat templates rendered in a sandbox, multi-turn chats that keep the KV cache, every stop id, BOS only
where the tokenizer adds one, and the manifest fields that carry all this from the checkpoint to the runners."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from omnicoder.runtimes.chat import ChatSession
from omnicoder.runtimes.chat_template import render_chat
from omnicoder.runtimes.decode_loop import generate_ids, generate_text
from omnicoder.runtimes.sampling import Sampler, SamplingParams

from omnicoder.errors import OmniCoderError
from omnicoder.tokenizer import ByteTokenizer, HFTokenizer

from .test_hf_import import make_hf_model, train_tokenizer

pytest.importorskip("jinja2", reason="jinja2 is not installed (pip install jinja2)")

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
GREEDY = SamplingParams(temperature=0)
STOPS = [1, 5]  # </s> and one more id named by generation_config.json


def tiny_tokenizer(**fields) -> HFTokenizer:
    text = train_tokenizer().backend_tokenizer.to_str()
    return HFTokenizer(text, bos_id=0, eos_id=1, **{"add_bos": False, "chat_template": TEMPLATE, **fields})


class ScriptedBackend:
    """A StepBackend that answers with the tokens of `script` in turn, recording every call's tokens."""

    def __init__(self, script: list[int], vocab: int = 320, context: int = 512) -> None:
        self.script, self.vocab, self.context_length = list(script), vocab, context
        self.calls: list[list[int]] = []
        self.length = 0
        self.truncated: list[int] = []

    def reset(self) -> None:
        self.length = 0

    @property
    def cache_length(self) -> int:
        return self.length

    def step(self, ids: list[int], positions: list[int]) -> np.ndarray:
        assert positions == list(range(self.length, self.length + len(ids)))  # the positions continue the cache
        self.calls.append(list(ids))
        self.length += len(ids)
        logits = np.zeros(self.vocab, np.float32)
        logits[self.script.pop(0)] = 1.0
        return logits

    def truncate(self, length: int) -> None:
        self.truncated.append(length)
        self.length = length


def templated_bytes(template: str, stops: tuple[int, ...] | None = None) -> ByteTokenizer:
    """The byte tokenizer with a chat template (byte ids only) and, when given, other stop ids."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class TemplatedBytes(ByteTokenizer):
        chat_template = template

        @property
        def stop_ids(self) -> list[int]:
            return list(stops) if stops is not None else [self.eos_id]

    return TemplatedBytes()


class Counting:
    """Wraps a backend and records the tokens of every call and every truncation."""

    def __init__(self, backend) -> None:
        self.inner, self.calls, self.truncated = backend, [], []
        self.context_length = backend.context_length

    def reset(self) -> None:
        self.inner.reset()

    @property
    def cache_length(self) -> int:
        return self.inner.cache_length

    def step(self, ids, positions):
        self.calls.append(list(ids))
        return self.inner.step(ids, positions)

    def truncate(self, length: int) -> None:
        self.truncated.append(length)
        self.inner.truncate(length)


# ---- templates --------------------------------------------------------------------------------------------


def test_template_renders_system_prompt_and_generation_prompt():
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert render_chat(TEMPLATE, messages, True, "<s>", "</s>") == "<s>system:be brief</s>\nuser:hi</s>\nassistant:"
    assert render_chat(TEMPLATE, messages, False, "<s>", "</s>") == "<s>system:be brief</s>\nuser:hi</s>\n"
    session = ChatSession(ScriptedBackend([]), tiny_tokenizer(), system="be brief")
    assert session.render([*session.messages, {"role": "user", "content": "hi"}]).startswith("<s>system:be brief")
    # what Hugging Face templates use: raise_exception, tojson, loop controls, {% generation %}, strftime_now
    hf_style = (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% generation %}{{ m | tojson }}{% endgeneration %}{% endfor %}{{ strftime_now('%Y')[:2] }}"
    )
    assert render_chat(hf_style, messages) == '{"role": "user", "content": "hi"}20'
    with pytest.raises(OmniCoderError, match="refused the conversation: roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", messages)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__ }}",
        "{{ messages.__class__.__mro__ }}",
        "{% if messages.__class__ is defined %}x{% endif %}",
        "{{ messages['__class__'] }}",
        "{{ messages.append(1) }}",
        "{{ raise_exception.__globals__ }}",
    ],
)
def test_sandbox_refuses_unsafe_templates(template):
    with pytest.raises(OmniCoderError, match="stopped by the sandbox: access to attribute") as info:
        render_chat(template, [{"role": "user", "content": "hi"}])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "template, message",
    [
        ("{% for m in messages %}", "not valid Jinja"),
        ("{{ 1 // 0 }}", "ZeroDivisionError"),
        ("{% for i in range(10**7) %}{% endfor %}", "Range too big"),
    ],
)
def test_broken_templates_fail_with_one_line(template, message):
    with pytest.raises(OmniCoderError, match=message):
        render_chat(template, [])


def test_missing_jinja_is_one_line(monkeypatch):
    from omnicoder.runtimes.chat_template import require_jinja

    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(OmniCoderError, match="pip install jinja2"):
        require_jinja()


# ---- stop ids and BOS ---------------------------------------------------------------------------------------


def test_every_stop_id_stops_generation(tiny_model):
    from omnicoder.runtimes.speculative import Speculation

    from omnicoder.generate import TorchBackend

    greedy = Sampler(GREEDY)
    out, _ = generate_ids(TorchBackend(tiny_model), [256, 65], 8, greedy, eos_id=-1)
    stops = [999, out[3], 998]  # the third stop id is one the model writes: generation ends right before it
    expected = out[: out.index(out[3])]
    stopped, stats = generate_ids(TorchBackend(tiny_model), [256, 65], 8, greedy, stops)
    assert stopped == expected and stats.stop_reason == "eos"
    backend = TorchBackend(tiny_model)
    fast, stats = generate_ids(backend, [256, 65], 8, greedy, stops, None, Speculation(backend, greedy, 2))
    assert fast == expected and stats.stop_reason == "eos"
    backend = ScriptedBackend([7, 8, 5, 9])
    assert generate_ids(backend, [3, 4], 10, greedy, STOPS)[0] == [7, 8]  # 5, the second stop id


@pytest.mark.parametrize("add_bos", [False, True])
def test_bos_only_when_the_tokenizer_adds_one(add_bos):
    tokenizer = tiny_tokenizer(add_bos=add_bos, stop_ids=STOPS)
    backend = ScriptedBackend([7, 5])
    generate_text(backend, tokenizer, "def fib", 4, Sampler(GREEDY))
    plain = tokenizer.encode("def fib")
    assert backend.calls[0] == ([0, *plain] if add_bos else plain)
    assert backend.calls[1:] == [[7]]  # then 5 (a stop id) ended it
    byte = ScriptedBackend([66, ByteTokenizer().eos_id], vocab=272)
    generate_text(byte, ByteTokenizer(), "A", 4, Sampler(GREEDY))
    assert byte.calls[0] == [256, 65]  # byte models keep BOS


# ---- multi-turn ---------------------------------------------------------------------------------------------


def test_second_turn_feeds_only_the_new_tokens():
    tokenizer = tiny_tokenizer(stop_ids=STOPS)
    reply = tokenizer.encode(" the lazy dog")
    backend = ScriptedBackend([*reply, 1, 5])  # turn 1: the reply, then </s>; turn 2: stop id 5 at once
    session = ChatSession(backend, tokenizer)
    text, stats = session.turn("def fib", 20, Sampler(GREEDY))
    first = session.encode([{"role": "user", "content": "def fib"}])
    assert text == " the lazy dog" and stats.stop_reason == "eos" and stats.prompt_tokens == len(first)
    assert backend.calls == [first, *[[t] for t in reply]]
    calls = len(backend.calls)
    _, stats = session.turn("and then?", 20, Sampler(GREEDY))
    transcript = session.encode(session.messages[:-1])  # user, assistant, user + the assistant's header
    assert transcript[: len(first) + len(reply)] == first + reply  # the cache is a prefix of the transcript
    assert backend.calls[calls:] == [transcript[len(first) + len(reply) :]]  # only the new tokens were fed
    assert stats.prompt_tokens == len(transcript) - len(first) - len(reply) and backend.truncated == []


def test_a_reply_tokenized_otherwise_rolls_the_cache_back():
    tokenizer = tiny_tokenizer(stop_ids=STOPS)
    canonical = tokenizer.encode(" the")
    pieces = [tokenizer.token_id(c) for c in ["Ġ", "t", "h", "e"]]  # the same text, one byte token each
    assert len(canonical) < len(pieces) and tokenizer.decode(pieces) == " the"
    backend = ScriptedBackend([*pieces, 1, 1])
    session = ChatSession(backend, tokenizer)
    session.turn("hi", 20, Sampler(GREEDY))
    first = session.encode([{"role": "user", "content": "hi"}])
    session.turn("more", 20, Sampler(GREEDY))
    transcript = session.encode(session.messages[:-1])
    assert backend.truncated == [len(first)]  # back to where the reply starts, not to the beginning
    assert backend.calls[-1] == transcript[len(first) :]


def test_a_one_shot_chat_may_draft_with_the_mtp_heads(tiny_model):
    from omnicoder.generate import TorchBackend

    tokenizer = templated_bytes(TEMPLATE.replace("</s>", ""))
    replies = [
        ChatSession(TorchBackend(tiny_model), tokenizer).turn("def f", 12, Sampler(GREEDY), speculative=k)
        for k in (0, 2)
    ]
    assert replies[1][0] == replies[0][0] and replies[1][1].draft_tokens > 0


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny random Llama checkpoint with a chat template and two stop ids, and its fp32 ONNX bundle."""
    from omnicoder.export.cli import main as export_main

    root = tmp_path_factory.mktemp("chat")
    directory = root / "hf"
    make_hf_model("llama", directory, seed=5)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    generation = json.loads((directory / "generation_config.json").read_text())
    (directory / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": STOPS}))
    bundle = root / "bundle"
    assert export_main(["--model", f"hf:{directory}", "--weights", "fp32", "--out", str(bundle)]) == 0
    return directory, bundle


def onnx_backend(bundle_dir):
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    bundle = open_bundle(bundle_dir)
    return GraphBackend(bundle, OnnxProgram(create_session(bundle, threads=1))), bundle.tokenizer()


def test_multi_turn_keeps_the_cache_and_equals_a_fresh_run(chat_model):
    _, bundle_dir = chat_model
    backend, tokenizer = onnx_backend(bundle_dir)
    counting = Counting(backend)
    session = ChatSession(counting, tokenizer, system="be brief")
    session.turn("def fibonacci(n):", 6, Sampler(GREEDY))
    first = session.encode(session.messages[:-1])
    calls = len(counting.calls)
    session.turn("the quick brown fox", 6, Sampler(GREEDY))
    transcript = session.encode(session.messages[:-1])
    prefill = counting.calls[calls]
    assert len(prefill) <= len(transcript) - len(first)  # the first turn's prompt is not fed again
    assert prefill == transcript[len(transcript) - len(prefill) :]  # the rest of the transcript, exactly
    fresh, _ = generate_ids(onnx_backend(bundle_dir)[0], transcript, 6, Sampler(GREEDY), tokenizer.stop_ids)
    assert session.reply_ids == fresh and len(fresh) > 0


# the assistant's turns come back as "ok": the cached reply always differs from the transcript (a rollback)
REWRITING_TEMPLATE = (
    "{% for m in messages %}{{ m['role'][0] }}:{{ 'ok' if m['role'] == 'assistant' else m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}a:{% endif %}"
)


@pytest.mark.slow  # an ExecuTorch lowering: ~35 s of CPU
def test_executorch_in_program_cache_rolls_back_like_onnx(tmp_path):
    """An ExecuTorch `--kv buffer` program keeps its KV inside; a chat turn rolls it back by position (truncate),
    feeds only the transcript after the common prefix, and answers what a fresh run over the transcript does."""
    pytest.importorskip("executorch.exir", reason="executorch is not installed (pip install omnicoder[executorch])")
    import torch
    from omnicoder.export.executorch_export import ExecuTorchExportOptions, export_executorch_bundle
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.chat import common_prefix
    from omnicoder.runtimes.executorch_session import ExecuTorchBufferBackend, create_backend

    from omnicoder.model import OmniCoder
    from omnicoder.presets import preset

    torch.manual_seed(0)
    model = OmniCoder(preset("test-gqa")).eval()
    export_executorch_bundle(model, ByteTokenizer().to_json(), tmp_path / "pte", ExecuTorchExportOptions())
    bundle = open_bundle(tmp_path / "pte")
    tokenizer = templated_bytes(REWRITING_TEMPLATE, stops=(-1,))  # no stop: every reply has its 6 tokens
    backend = Counting(create_backend(bundle))
    assert isinstance(backend.inner, ExecuTorchBufferBackend)
    session = ChatSession(backend, tokenizer)
    session.turn("def f", 6, Sampler(GREEDY))
    cached, calls = list(session.cached), len(backend.calls)
    session.turn("more", 6, Sampler(GREEDY))
    transcript = session.encode(session.messages[:-1])
    keep = common_prefix(cached, transcript)
    assert len(session.reply_ids) == 6 and keep < len(cached)  # the template rewrote the first reply
    assert backend.truncated == [keep] and backend.calls[calls] == transcript[keep:]  # rolled back, not reset
    fresh, _ = generate_ids(create_backend(bundle), transcript, 6, Sampler(GREEDY), [-1])
    assert session.reply_ids == fresh


def test_genai_config_carries_every_stop_id_and_the_template(chat_model):
    """onnxruntime-genai users get the stop ids (eos_token_id as a list) and the chat template."""
    from omnicoder.runtimes.bundle import open_bundle

    _, bundle_dir = chat_model
    bundle = open_bundle(bundle_dir)
    assert bundle.sidecar("genai_config")["model"]["eos_token_id"] == STOPS
    config = json.loads((bundle_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == TEMPLATE and config["eos_token"] == "</s>"
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        print(f"onnxruntime_genai is not importable ({exc}): the genai half is not run")
        return
    model = og.Model(str(bundle_dir))
    tokenizer = og.Tokenizer(model)
    assert sorted(tokenizer.eos_token_ids) == STOPS
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    assert rendered == render_chat(TEMPLATE, messages, True, "<s>", "</s>")


# ---- the manifest -------------------------------------------------------------------------------------------


def test_manifest_records_add_bos_stop_ids_and_template(chat_model):
    from omnicoder.runtimes.bundle import open_bundle

    from omnicoder.loading import load_model_and_tokenizer

    directory, bundle_dir = chat_model
    _, imported = load_model_and_tokenizer(f"hf:{directory}")
    assert (imported.add_bos, imported.stop_ids, imported.chat_template) == (False, STOPS, TEMPLATE)
    bundle = open_bundle(bundle_dir)
    section = dict(bundle.manifest["tokenizer"])
    assert section.pop("chat_format")["generation_prompt"] == "assistant:"  # role pieces for the apps
    assert section == {
        "file": "tokenizer.json",
        "type": "huggingface",
        "add_bos": False,
        "stop_ids": STOPS,
        "chat_template": "chat_template.jinja",
    }
    assert "chat_template.jinja" in bundle.manifest["files"]  # checksummed like every other file
    tokenizer = bundle.tokenizer()
    assert (tokenizer.add_bos, tokenizer.stop_ids, tokenizer.chat_template) == (False, STOPS, TEMPLATE)


def _copy_with_tokenizer_section(bundle_dir: Path, out: Path, **changes) -> Path:
    shutil.copytree(bundle_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    section = {k: v for k, v in {**manifest["tokenizer"], **changes}.items() if v is not None}
    (out / "manifest.json").write_text(json.dumps({**manifest, "tokenizer": section}))
    return out


def test_bundles_written_before_the_fields_still_load(chat_model, tmp_path, capsys):
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.onnx_decode_generate import main as runner_main

    old = _copy_with_tokenizer_section(chat_model[1], tmp_path / "old", add_bos=None, stop_ids=None, chat_template=None)
    tokenizer = open_bundle(old).tokenizer()
    assert (tokenizer.add_bos, tokenizer.stop_ids, tokenizer.chat_template) == (True, [1], None)
    assert runner_main(["--bundle", str(old), "--prompt", "def", "--max-new-tokens", "2", "--temperature", "0"]) == 0
    capsys.readouterr()
    assert runner_main(["--bundle", str(old), "--chat", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: this bundle has no chat template; re-export it") and "\n" not in err


def test_bad_tokenizer_fields_fail_with_one_line(chat_model, tmp_path, capsys):
    from omnicoder.runtimes.onnx_decode_generate import main as runner_main

    outside = _copy_with_tokenizer_section(chat_model[1], tmp_path / "outside", stop_ids=[1, 100000])
    assert runner_main(["--bundle", str(outside), "--prompt", "hi"]) == 2
    assert "tokenizer.stop_ids holds 100000, outside the model's 320 ids" in capsys.readouterr().err
    unlisted = _copy_with_tokenizer_section(chat_model[1], tmp_path / "unlisted", chat_template="other.jinja")
    assert runner_main(["--bundle", str(unlisted), "--chat", "--prompt", "hi"]) == 2
    assert "chat template other.jinja, which is not in its file list" in capsys.readouterr().err
    wrong_type = _copy_with_tokenizer_section(chat_model[1], tmp_path / "type", add_bos="yes")
    assert runner_main(["--bundle", str(wrong_type), "--prompt", "hi"]) == 2
    assert "tokenizer/add_bos" in capsys.readouterr().err


# ---- the runners --------------------------------------------------------------------------------------------


def test_chat_cli_one_shot_and_interactive(chat_model, monkeypatch, capsys):
    from omnicoder.runtimes.onnx_decode_generate import main as runner_main

    _, bundle_dir = chat_model
    args = ["--bundle", str(bundle_dir), "--chat", "--max-new-tokens", "5", "--temperature", "0"]
    assert runner_main([*args, "--prompt", "def fib", "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out.splitlines()[-1])
    backend, tokenizer = onnx_backend(bundle_dir)
    expected = ChatSession(backend, tokenizer).turn("def fib", 5, Sampler(GREEDY))[0]
    assert out == expected + "\n" + json.dumps(stats) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("def fib\nthe lazy dog\n\nnever read\n"))
    assert runner_main([*args, "--system", "be brief"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("[stats]") == 2  # two turns; the empty line ended the chat
    session = ChatSession(onnx_backend(bundle_dir)[0], tokenizer, system="be brief")
    replies = [session.turn(t, 5, Sampler(GREEDY))[0] for t in ("def fib", "the lazy dog")]
    assert captured.out == "".join(reply + "\n" for reply in replies)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # EOF at once: no turn
    assert runner_main(args) == 0 and capsys.readouterr().out == ""


def test_pytorch_runner_chats_like_the_onnx_runner(chat_model, capsys):
    from omnicoder.runtimes.onnx_decode_generate import main as runner_main

    from omnicoder.cli.generate import main as generate_main

    directory, bundle_dir = chat_model
    args = ["--chat", "--system", "be brief", "--prompt", "def fib", "--max-new-tokens", "6", "--temperature", "0"]
    assert generate_main(["--model", f"hf:{directory}", *args]) == 0
    torch_out = capsys.readouterr().out
    assert runner_main(["--bundle", str(bundle_dir), *args]) == 0
    assert capsys.readouterr().out == torch_out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--system", "x", "--prompt", "hi"], "--system applies with --chat"),
        (["--chat", "--score", "f.py"], "--chat and --score are exclusive"),
        (["--chat", "--speculative", "1"], "--speculative drafts only one turn"),
        (["--chat", "--prompt", ""], "the prompt is empty"),
    ],
)
def test_chat_flag_errors_are_one_line(chat_model, argv, message, capsys):
    from omnicoder.runtimes.onnx_decode_generate import main as runner_main

    assert runner_main(["--bundle", str(chat_model[1]), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_models_without_a_usable_template_fail_with_one_line(chat_model, tmp_path, capsys):
    from omnicoder.cli.generate import main as generate_main

    assert generate_main(["--model", "default", "--chat", "--prompt", "hi"]) == 2
    assert "byte-level completion model" in capsys.readouterr().err
    unsafe = tmp_path / "unsafe"
    shutil.copytree(chat_model[0], unsafe)
    config = json.loads((unsafe / "tokenizer_config.json").read_text())
    template = "{{ messages.__class__.__base__.__subclasses__() }}"
    (unsafe / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    assert generate_main(["--model", f"hf:{unsafe}", "--chat", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the chat template was stopped by the sandbox") and "\n" not in err


def test_gguf_template_and_stop_ids_reach_the_manifest(tmp_path):
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install omnicoder[hf])")
    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle
    from omnicoder.runtimes.bundle import open_bundle

    from omnicoder.loading import load_model_and_tokenizer

    from .test_gguf_import import TEMPLATE as GGUF_TEMPLATE
    from .test_gguf_import import T, write_gguf

    write_gguf(make_hf_model("llama", tmp_path / "hf"), tmp_path / "m.gguf", "llama", T.Q8_0)
    model, tokenizer = load_model_and_tokenizer(f"gguf:{tmp_path / 'm.gguf'}")
    export_onnx_bundle(model, tokenizer.to_json(), tmp_path / "b", OnnxExportOptions(weights="fp32"))
    bundle = open_bundle(tmp_path / "b")
    assert bundle.manifest["tokenizer"]["add_bos"] is False and bundle.manifest["tokenizer"]["stop_ids"] == [1]
    assert bundle.tokenizer().chat_template == GGUF_TEMPLATE
