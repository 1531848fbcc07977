"""The gateway builds the trainer's config with the trainer's own type (training/protocol.py): what
it writes is what `python -m training.run` reads back, and a wrong value fails in the gateway."""

import dataclasses
import json

import pytest

from service.auth import Principal
from service.training import TrainingRequest, trainer_config
from training.protocol import ALL_PROJECTIONS, ConfigError, TrainConfig

REQUEST = TrainingRequest(adapter="tone", corpus="lore", recipe="rag", rank=4, epochs=2, max_examples=10,
                          learning_rate=1e-4, requested_by=Principal(key_id=None, scope="admin"))


def test_the_config_the_gateway_writes_is_the_one_the_trainer_reads(make_settings, tmp_path):
    settings = make_settings(training_batch_size=2, training_threads=1)
    config = trainer_config(settings, tmp_path, REQUEST)
    written = json.loads(json.dumps(config.to_dict()))  # as service/training.py writes config.json
    assert TrainConfig.from_dict(written) == config
    assert (config.rank, config.alpha, config.epochs, config.learning_rate) == (4, 8, 2, 1e-4)
    assert (config.batch_size, config.threads, config.max_length) == (2, 1, settings.max_model_len)
    assert config.examples == str(tmp_path / "examples.jsonl") and config.out_dir == str(tmp_path / "adapter")
    assert tuple(config.target_modules) == ALL_PROJECTIONS  # no GRAFT_LORA_TARGET_MODULES: every projection
    assert trainer_config(make_settings(lora_target_modules=["q_proj", "v_proj"]), tmp_path,
                          REQUEST).target_modules == ["q_proj", "v_proj"]


def test_a_value_the_trainer_would_refuse_fails_in_the_gateway(make_settings, tmp_path):
    with pytest.raises(ConfigError, match="rank"):
        trainer_config(make_settings(), tmp_path, dataclasses.replace(REQUEST, rank=0))
