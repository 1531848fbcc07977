"""`graft model prepare`: a loadable safetensors folder, converted once, never half-written."""

import json

import pytest
from safetensors import safe_open

from service.basemodel import MARKER, BaseModelError, check_model_folder, prepare_base_model


def test_prepared_folder_is_a_plain_hf_model(base_model_dir):
    config = json.loads((base_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    with safe_open(base_model_dir / "model.safetensors", "pt") as f:
        names = set(f.keys())
    # vLLM ties lm_head to the embeddings; a stored lm_head without embed_tokens breaks it.
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert (base_model_dir / "tokenizer.json").is_file()
    assert json.loads((base_model_dir / MARKER).read_text())["gguf_sha256"]


def test_prepare_is_idempotent(base_model_dir):
    before = (base_model_dir / "model.safetensors").stat().st_mtime_ns
    assert prepare_base_model(base_model_dir) == base_model_dir
    assert (base_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_check_model_folder(tmp_path, base_model_dir):
    check_model_folder(str(base_model_dir))
    with pytest.raises(BaseModelError, match="no config.json"):
        check_model_folder(str(tmp_path / "missing"))
