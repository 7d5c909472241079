"""Saved outputs of real (few-second) trainings load with plain transformers/peft, without alignx.

One training per setup (full fine-tune, LoRA + merge, DoRA + merge) is shared by the tests of
this module; every load check runs in a fresh interpreter where importing alignx fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignx.config import compose
from conftest import FAST
from test_models import run_plain_python

SETUPS = {
    "full": ["adapter=none"],
    "lora": ["adapter=lora", "save.merge_adapter=true"],
    "dora": ["adapter=dora", "save.merge_adapter=true"],
}
PROMPT = "Review: a wonderful, moving film.\nSentiment:"
#: first bytes of pickle (protocol 2+) and of torch.save's zip container
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """setup name -> Job, each trained once on first use."""
    from alignx.train import train

    jobs: dict = {}

    def get(name: str):
        if name not in jobs:
            out = tmp_path_factory.mktemp(name)
            cfg = compose([*FAST, *SETUPS[name], "tracking=none", f"output_dir={out}", f"outputs_root={out}"])
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("HF_HUB_OFFLINE", "1")
                jobs[name] = train(cfg)
            assert jobs[name].model_dir == Path(out).resolve() / "model"
        return jobs[name]

    return get


def test_full_finetune_loads_with_plain_transformers(trained) -> None:
    job = trained("full")
    out = job.output_dir
    assert not (out / "base").exists() and not (out / "merged").exists()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (out / "model").iterdir()}
    result = run_plain_python(
        f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(out / 'model')!r})
        tok = AutoTokenizer.from_pretrained({str(out / 'model')!r})
        inputs = tok([{PROMPT!r}], return_tensors="pt")
        gen = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        print(json.dumps(dict(
            cls=type(model).__name__,
            n_prompt=inputs.input_ids.shape[1],
            n_out=gen.shape[1],
            text=tok.decode(gen[0, inputs.input_ids.shape[1]:]),
            prompt_ids=inputs.input_ids[0].tolist(),
        )))
        """,
        cwd=out,
    )
    info = json.loads(result.strip().splitlines()[-1])
    assert info["cls"] == "LlamaForCausalLM"
    assert info["n_prompt"] < info["n_out"] <= info["n_prompt"] + 5
    assert isinstance(info["text"], str)
    assert info["prompt_ids"][0] == 1 and len(info["prompt_ids"]) == 1 + len(PROMPT.encode())  # the byte tokenizer


def _adapter_report(out: Path) -> dict:
    """Load base+adapter three ways (PeftModel, AutoPeftModel, merged) in a plain interpreter."""
    result = run_plain_python(
        f"""
        import json, os, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from peft import AutoPeftModelForCausalLM, PeftModel

        out = {str(out)!r}
        tok = AutoTokenizer.from_pretrained(os.path.join(out, "model"))
        base_tok = AutoTokenizer.from_pretrained(os.path.join(out, "base"))
        inputs = tok([{PROMPT!r}], return_tensors="pt")
        report = dict(same_tokenizer=tok({PROMPT!r}).input_ids == base_tok({PROMPT!r}).input_ids)

        def gen_len(model):
            g = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
            return g.shape[1] - inputs.input_ids.shape[1]

        with torch.no_grad():
            base = AutoModelForCausalLM.from_pretrained(os.path.join(out, "base")).eval()
            base_logits = base(**inputs).logits.clone()
            peft = PeftModel.from_pretrained(base, os.path.join(out, "model")).eval()
            peft_logits = peft(**inputs).logits
            report["peft_new_tokens"] = gen_len(peft)
            report["adapter_vs_base"] = (peft_logits - base_logits).abs().max().item()

            auto = AutoPeftModelForCausalLM.from_pretrained(os.path.join(out, "model")).eval()
            report["auto_cls"] = type(auto).__name__
            report["auto_vs_peft"] = (auto(**inputs).logits - peft_logits).abs().max().item()
            report["auto_new_tokens"] = gen_len(auto)

            merged = AutoModelForCausalLM.from_pretrained(os.path.join(out, "merged")).eval()
            report["merged_cls"] = type(merged).__name__
            report["merged_has_lora"] = any("lora" in n for n, _ in merged.named_modules())
            report["merged_vs_peft"] = (merged(**inputs).logits - peft_logits).abs().max().item()
            report["merged_new_tokens"] = gen_len(merged)
        print(json.dumps(report))
        """,
        cwd=out,
    )
    return json.loads(result.strip().splitlines()[-1])


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_adapter_outputs_load_with_plain_peft(trained, adapter: str) -> None:
    from safetensors.torch import load_file

    job = trained(adapter)
    out = job.output_dir
    model_dir = out / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "model.safetensors" not in names  # only the adapter, not a full copy of the model

    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["use_dora"] is (adapter == "dora")
    assert Path(config["base_model_name_or_path"]) == out / "base"
    assert (out / "base" / "config.json").is_file() and (out / "base" / "model.safetensors").is_file()

    # the adapter trained: lora_B starts at zero and must have moved
    weights = load_file(str(model_dir / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b, sorted(weights)
    assert all(v.abs().max() > 0 for v in lora_b.values()), [k for k, v in lora_b.items() if not v.any()]
    if adapter == "dora":
        assert any("lora_magnitude_vector" in k for k in weights), sorted(weights)

    report = _adapter_report(out)
    assert report["same_tokenizer"]
    assert report["peft_new_tokens"] >= 1 and report["auto_new_tokens"] >= 1 and report["merged_new_tokens"] >= 1
    assert report["adapter_vs_base"] > 1e-6  # the adapter changes the base model's outputs
    assert report["auto_cls"] == "PeftModelForCausalLM"
    assert report["auto_vs_peft"] < 1e-5
    # the merged copy is a plain model equal to base + adapter
    assert report["merged_cls"] == "LlamaForCausalLM" and not report["merged_has_lora"]
    assert report["merged_vs_peft"] < 1e-4, report


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_only_safetensors_are_written(trained, setup: str) -> None:
    out = trained(setup).output_dir
    dirs = [out / d for d in ("model", "base", "merged") if (out / d).is_dir()]
    assert len(dirs) == (1 if setup == "full" else 3)
    for d in dirs:
        files = [p for p in d.rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files), d
        for p in files:
            assert p.suffix not in {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}, p
            with open(p, "rb") as fh:
                assert not fh.read(4).startswith(PICKLE_MAGIC), f"{p} looks like a pickle / torch.save file"
    # no stray temp dirs from the atomic saves
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
