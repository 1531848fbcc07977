"""Tiny training inputs shared by the trainer's tests: chat-formatted prompt/completion pairs
built with the base model's own chat template (as the gateway renders its prompts)."""

import json
import subprocess
from pathlib import Path

import pytest

from training.protocol import TRAINER

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tokenizer(base_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir)


def chat_prompt(tokenizer, question: str) -> str:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture
def examples_file(tmp_path, tokenizer) -> Path:
    """Six short examples: five prompt/completion pairs and one plain text."""
    rows = [{"prompt": chat_prompt(tokenizer, f"What is the code of vault {i}?"),
             "completion": f"The code of vault {i} is OTTER-{i}{i}."} for i in range(5)]
    rows.append({"text": "graft compiles a corpus into a LoRA adapter and serves it with vLLM."})
    path = tmp_path / "examples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def make_config(tmp_path, base_model_dir, examples_file):
    def make(**overrides) -> dict:
        config = {"base_model": str(base_model_dir), "examples": str(examples_file),
                  "out_dir": str(tmp_path / "adapter"), "rank": 4, "alpha": 8,
                  "target_modules": ["q_proj", "v_proj"], "epochs": 1, "learning_rate": 5e-3,
                  "batch_size": 2, "max_length": 128, "threads": 2, "seed": 0, "precision": "auto",
                  "checkpoint_dir": None, "resume": False}
        config.update(overrides)
        return config

    return make


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def spawn(config_path: Path) -> subprocess.Popen:
    """`python -m training.run CONFIG` as the gateway spawns it (stderr into a file beside the
    config, so that a chatty library can never block the process on a full pipe)."""
    with open(config_path.with_suffix(".stderr"), "w") as stderr:
        return subprocess.Popen([*TRAINER, str(config_path)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)


def parse_events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]
