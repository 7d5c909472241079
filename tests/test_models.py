"""Models: the byte tokenizer, the code-built Llama sizes and seeding, HF loading errors, atomic saves.

Everything here runs on CPU in seconds and never touches the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from alignx.config import compose
from alignx.errors import ModelLoadError
from alignx.models.loading import build_hf, build_llama, save_pretrained_atomic
from alignx.models.tokenizer import build_byte_tokenizer
from conftest import run_alignx

#: ASCII (every code point 0-127), Latin-1 (every 2-byte sequence C2/C3 xx), accents, CJK, emoji.
ALL_KINDS = "".join(chr(i) for i in range(256)) + " héllo wörld, café naïve Ångström — 中文 😀🚀👍🏽"

#: A model small enough to build, save and load in well under a second.
MICRO = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=True,
    init_seed=0,
)

#: Make any import of alignx fail, so the code after it proves plain transformers/peft suffice.
NO_ALIGNX = textwrap.dedent(
    """
    import sys
    class _BlockAlignx:
        def find_spec(self, name, path=None, target=None):
            if name == "alignx" or name.startswith("alignx."):
                raise ImportError("alignx must not be imported here")
            return None
    sys.meta_path.insert(0, _BlockAlignx())
    """
)


def run_plain_python(code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter that cannot import alignx; return its stdout."""
    script = NO_ALIGNX + textwrap.dedent(code) + "\nassert 'alignx' not in sys.modules, sorted(m for m in sys.modules if 'alignx' in m)\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


# -- byte tokenizer ------------------------------------------------------------------------


def test_every_byte_round_trips(tok) -> None:
    ids = tok(ALL_KINDS).input_ids
    # one token per UTF-8 byte, plus BOS
    assert len(ids) == 1 + len(ALL_KINDS.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=True) == ALL_KINDS
    assert all(3 <= i < len(tok) for i in ids[1:])
    # byte-level: equal bytes get equal ids and different bytes different ids
    byte_to_id: dict[int, int] = {}
    for b, i in zip(ALL_KINDS.encode("utf-8"), ids[1:]):
        assert byte_to_id.setdefault(b, i) == i
    assert len(set(byte_to_id.values())) == len(byte_to_id)
    # the vocab is exactly 3 specials + 256 bytes, ids 0..258
    assert len(tok) == 259
    assert sorted(tok.get_vocab().values()) == list(range(259))
    for text in ("", "a", "é", "😀", "\n\t ", "  two  spaces  "):
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_bos_prepended_by_default_and_special_ids_distinct(tok) -> None:
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    plain = tok("abc", add_special_tokens=False).input_ids
    assert len(plain) == 3 and tok.bos_token_id not in plain
    assert tok("abc").input_ids == [tok.bos_token_id, *plain]
    # specials never collide with a byte id
    byte_ids = set(tok(ALL_KINDS, add_special_tokens=False).input_ids)
    assert not byte_ids & {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}


@pytest.mark.parametrize(
    "prompt,completion",
    [
        ("Question: 2+2=", " 4"),
        ("Review: great movie!\nSentiment:", " positive"),
        ("café", "ñandú"),
        ("emoji ", "😀 done"),
        ("a\n", "\nb"),
        ("", "only completion"),
        ("trailing space ", " leading space"),
    ],
)
def test_prompt_and_completion_tokens_concatenate(tok, prompt: str, completion: str) -> None:
    whole = tok(prompt + completion).input_ids
    parts = tok(prompt).input_ids + tok(completion, add_special_tokens=False).input_ids
    assert parts == whole


def test_chat_template(tok) -> None:
    conversation = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    rendered = tok.apply_chat_template(conversation, tokenize=False)
    assert rendered == "<|user|>\nWhat is 2+2?\n<|assistant|>\n4</s>\n"
    follow_up = [*conversation, {"role": "user", "content": "And 3+3?"}]
    without = tok.apply_chat_template(follow_up, tokenize=False)
    with_prompt = tok.apply_chat_template(follow_up, tokenize=False, add_generation_prompt=True)
    assert without == rendered + "<|user|>\nAnd 3+3?\n"
    assert with_prompt == without + "<|assistant|>\n"


def test_saved_tokenizer_loads_with_plain_transformers(tok, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path / "tok")
    texts = [ALL_KINDS, "Question: 2+2=", " 4", ""]
    conversation = [{"role": "user", "content": "hi é"}, {"role": "assistant", "content": "yo 😀"}]
    out = run_plain_python(
        f"""
        import json
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(tmp_path / 'tok')!r})
        conv = {conversation!r}
        print(json.dumps(dict(
            ids=[tok(t).input_ids for t in {texts!r}],
            decoded=tok.decode(tok({ALL_KINDS!r}).input_ids, skip_special_tokens=True),
            specials=[tok.pad_token_id, tok.bos_token_id, tok.eos_token_id],
            template=tok.chat_template,
            rendered=tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True),
            size=len(tok),
        )))
        """,
        cwd=tmp_path,
    )
    loaded = json.loads(out.strip().splitlines()[-1])
    assert loaded["ids"] == [tok(t).input_ids for t in texts]
    assert loaded["decoded"] == ALL_KINDS
    assert loaded["specials"] == [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id]
    assert loaded["template"] == tok.chat_template
    assert loaded["rendered"] == tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert loaded["size"] == len(tok)


# -- code-built Llama ----------------------------------------------------------------------


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,low,high", [("tiny", 1_000_000, 5_000_000), ("small", 20_000_000, 30_000_000)])
def test_model_sizes(name: str, low: int, high: int) -> None:
    cfg = compose([f"model={name}"])
    model, tokenizer = build_llama(cfg.model)
    assert low <= n_params(model) <= high, n_params(model)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.max_position_embeddings == tokenizer.model_max_length == cfg.model.max_position_embeddings


def test_build_llama_is_deterministic_in_init_seed() -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        return build_llama({**MICRO, "init_seed": seed})[0].state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"])
    # independent of the global (training) RNG, which it also leaves untouched
    torch.manual_seed(123)
    d = weights(0)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))
    assert all(torch.equal(a[k], d[k]) for k in a)


# -- build_hf -------------------------------------------------------------------------------


def test_build_hf_loads_a_local_directory_and_generates(tmp_path: Path) -> None:
    model, tokenizer = build_llama(MICRO)
    local = tmp_path / "local-model"
    model.save_pretrained(local)
    tokenizer.save_pretrained(local)

    cfg = compose(["model=hf", f"model.name_or_path={local}"])
    loaded, loaded_tok = build_hf(cfg.model)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded_tok("hello").input_ids == tokenizer("hello").input_ids
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value.float(), original[key].float()), key

    inputs = loaded_tok(["Question: 2+2="], return_tensors="pt")
    out = loaded.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=loaded_tok.pad_token_id)
    assert out.shape[0] == 1 and inputs.input_ids.shape[1] < out.shape[1] <= inputs.input_ids.shape[1] + 4
    assert isinstance(loaded_tok.decode(out[0]), str)


@pytest.mark.parametrize("name", ["/nonexistent/model", "./missing-dir"])
def test_build_hf_missing_path(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        build_hf({"name_or_path": name})
    message = str(info.value)
    assert name in message and "does not exist" in message
    assert str(Path(name).resolve()) in message  # the resolved path, e.g. <tmp>/missing-dir
    if name.startswith("./"):
        assert str(tmp_path.resolve() / "missing-dir") in message


def test_build_hf_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_text("not a model")
    with pytest.raises(ModelLoadError, match="is not a directory"):
        build_hf({"name_or_path": str(tmp_path / "model.bin")})


def test_build_hf_hub_id_offline_fails_fast_and_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; when it was imported before the
    # autouse fixture set the variable (test collection imports transformers), set it directly.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "someorg/some-model-that-does-not-exist"
    t0 = time.time()
    with pytest.raises(ModelLoadError) as info:
        build_hf({"name_or_path": name})
    elapsed = time.time() - t0
    message = str(info.value)
    assert elapsed < 20, f"offline hub lookup took {elapsed:.1f}s"
    assert name in message
    assert "model.name_or_path=DIR" in message  # points at passing a local directory
    assert "HF_HUB_OFFLINE" in message
    assert len(message) < 600 and "\n" not in message and "Traceback" not in message
    # raised `from None`: no hub exception chain is printed under it
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_build_hf_needs_a_name() -> None:
    with pytest.raises(ModelLoadError, match="name_or_path"):
        build_hf({"name_or_path": None})


def test_cli_missing_model_path_is_one_clear_error(tmp_path: Path) -> None:
    proc = run_alignx(
        ["model=hf", "model.name_or_path=/nonexistent/x", "tracking=none", f"output_dir={tmp_path / 'o'}"],
        cwd=tmp_path,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    errors = [line for line in proc.stderr.splitlines() if line.startswith("alignx: error:")]
    assert len(errors) == 1, proc.stderr
    assert "/nonexistent/x" in errors[0] and "does not exist" in errors[0], errors[0]
    assert "Traceback" not in output


# -- save_pretrained_atomic -----------------------------------------------------------------


class FakeSaveable:
    """Writes ``files`` with save_pretrained; raises after writing the first one if ``fail``."""

    def __init__(self, files: dict[str, str], fail: bool = False):
        self.files = files
        self.fail = fail

    def save_pretrained(self, directory, **kwargs) -> None:
        for i, (name, text) in enumerate(self.files.items()):
            (Path(directory) / name).write_text(text)
            if self.fail and i == 0:
                raise RuntimeError("disk full")


def test_save_pretrained_atomic_writes_everything(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "model"
    result = save_pretrained_atomic(dest, FakeSaveable({"config.json": "{}", "model.safetensors": "w"}), FakeSaveable({"tokenizer.json": "t"}))
    assert Path(result) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert [p.name for p in dest.parent.iterdir()] == ["model"]  # no temp dir left

    # saving again replaces the previous contents wholesale
    save_pretrained_atomic(dest, FakeSaveable({"adapter_config.json": "{}"}))
    assert sorted(p.name for p in dest.iterdir()) == ["adapter_config.json"]
    assert [p.name for p in dest.parent.iterdir()] == ["model"]


def test_save_pretrained_atomic_with_a_real_model(tmp_path: Path) -> None:
    model, tokenizer = build_llama(MICRO)
    dest = save_pretrained_atomic(tmp_path / "model", model, tokenizer)
    names = {p.name for p in Path(dest).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_save_pretrained_atomic_failure_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained_atomic(dest, FakeSaveable({"config.json": "{}"}), FakeSaveable({"a.safetensors": "a", "b.safetensors": "b"}, fail=True))
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []  # no temp dir left behind


def test_save_pretrained_atomic_failure_keeps_previous_model(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    save_pretrained_atomic(dest, FakeSaveable({"config.json": "old", "model.safetensors": "old"}))
    with pytest.raises(RuntimeError):
        save_pretrained_atomic(dest, FakeSaveable({"config.json": "new", "model.safetensors": "new"}, fail=True))
    assert {p.name: p.read_text() for p in dest.iterdir()} == {"config.json": "old", "model.safetensors": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
