from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def good_lora(base_model_dir, tmp_path_factory) -> Path:
    """A real, untrained PEFT LoRA (rank 8, q_proj + v_proj) for the base model. Do not modify."""
    from tests.adapters_store.lora_factory import make_lora

    return make_lora(base_model_dir, tmp_path_factory.mktemp("good-lora"))
