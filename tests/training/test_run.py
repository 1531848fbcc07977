"""`python -m training.run CONFIG` as the gateway spawns it: events on stdout, the adapter, exit codes,
SIGTERM."""

import json
import signal
import time

import pytest
from safetensors import safe_open

from tests.training.conftest import parse_events, spawn, write_config


def test_tiny_run_writes_a_loadable_adapter_and_the_event_stream(tmp_path, make_config, base_model_dir):
    config = make_config(batch_size=6, epochs=3)  # 3 steps on the same batch of 6 examples
    proc = spawn(write_config(tmp_path, config))
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, (tmp_path / "config.stderr").read_text()[-3000:]
    events = parse_events(stdout)  # every stdout line is one JSON event
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    start, done = events[0], events[-1]
    assert start["steps"] == 3 and start["examples"] == 6 and start["device"] == "cpu"
    assert start["precision"] in ("fp32", "bf16")
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[0]["step"] == 1 and progress[-1]["step"] == 3
    for e in progress:
        assert {"step", "steps", "epoch", "loss", "tokens", "tokens_per_s", "eta_s"} <= set(e)
        assert e["loss"] > 0 and e["tokens"] > 0
    assert len(done["loss_curve"]) == 3 and all(0 < x < 20 for x in done["loss_curve"])
    assert done["loss_curve"][-1] < done["loss_curve"][0]  # the same batch, learnt
    assert done["tokens"] == progress[-1]["tokens"] and done["tokens_per_s"] > 0 and done["seconds"] > 0

    out = tmp_path / "adapter"
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    assert adapter_config["base_model_name_or_path"] == str(base_model_dir)
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        names = list(f.keys())
        assert len(names) == 30 * 2 * 2  # 30 layers x (q, v) x (A, B)
        assert any(f.get_tensor(n).abs().sum() > 0 for n in names if "lora_B" in n)  # trained
    assert not list(tmp_path.glob(".adapter.tmp-*"))

    # The same validation as an upload, and PEFT loads it onto the base model.
    from adapters_store.validation import BaseModelShapes, validate_adapter

    validate_adapter(out, BaseModelShapes(base_model_dir), max_rank=16)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_dir), out)


def test_sigterm_cancels_promptly_and_writes_no_adapter(tmp_path, make_config):
    config = make_config(epochs=50, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1)
    proc = spawn(write_config(tmp_path, config))
    try:
        events = []
        for line in proc.stdout:  # wait until it is really training (a checkpoint written)
            events.append(json.loads(line))
            if events[-1]["event"] in ("checkpoint", "error", "done"):
                break
        assert events[-1]["event"] == "checkpoint", events
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert parse_events(rest)[-1] == {"event": "cancelled"}
    assert took < 15
    assert not (tmp_path / "adapter").exists()
    assert not list(tmp_path.glob(".adapter.tmp-*"))
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()  # what a resume would continue from


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "only a prompt"}\n', "line 1"),
    ("this is not json\n", "not JSON"),
])
def test_malformed_examples_give_an_error_event_and_exit_1(tmp_path, make_config, content, message):
    examples = tmp_path / "bad.jsonl"
    examples.write_text(content)
    proc = spawn(write_config(tmp_path, make_config(examples=str(examples))))
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    (event,) = parse_events(stdout)
    assert event["event"] == "error" and message in event["message"]
    assert not (tmp_path / "adapter").exists()


def test_bad_config_gives_an_error_event_and_exit_1(tmp_path, make_config):
    proc = spawn(write_config(tmp_path, make_config(rank=0)))
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    (event,) = parse_events(stdout)
    assert event["event"] == "error" and "rank" in event["message"]
