"""Examples, tokenization, truncation, batching, collation, config and precision choice (no model)."""

import json

import pytest

from training import device
from training.data import (
    IGNORE_INDEX,
    Encoded,
    collate,
    encode_examples,
    epoch_batches,
    read_examples,
    truncate_pair,
)
from training.protocol import ConfigError, ExamplesError, TrainConfig, event_line, parse_event
from training.trainer import lr_at


def test_collate_masks_prompt_and_padding():
    batch = [Encoded([5, 6, 7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 8, 9]),
             Encoded([1, 2, 3], [1, 2, 3])]
    input_ids, mask, labels = collate(batch, pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 0, 0]]
    assert labels.tolist() == [[-100, -100, -100, 8, 9], [1, 2, 3, -100, -100]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # Nothing padded: no mask, so the model takes its causal fast path.
    assert collate([Encoded([1, 2], [1, 2])] * 2, pad_id=0)[1] is None


def test_prompt_completion_encoding_scores_only_completion_and_eos(tokenizer):
    prompt = "<|im_start|>user\nWhat is the code?<|im_end|>\n<|im_start|>assistant\n"
    (pair, text) = encode_examples(
        [read_one({"prompt": prompt, "completion": "OTTER-42."}), read_one({"text": "plain words here"})],
        tokenizer, max_length=64)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer("OTTER-42." + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert pair.input_ids == prompt_ids + answer_ids
    assert pair.labels == [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    assert pair.labels[-1] == tokenizer.eos_token_id
    assert text.input_ids == tokenizer("plain words here", add_special_tokens=False)["input_ids"]
    assert text.labels == text.input_ids


def read_one(row: dict):
    from training.data import _example

    return _example(row, 1)


def test_truncation_drops_the_prompt_left_side_and_keeps_the_completion():
    enc = truncate_pair(list(range(10)), [100, 101, 102], max_length=6)
    assert enc.input_ids == [7, 8, 9, 100, 101, 102]
    assert enc.labels == [IGNORE_INDEX] * 3 + [100, 101, 102]
    enc = truncate_pair(list(range(10)), list(range(100, 110)), max_length=6)  # completion too long
    assert enc.input_ids == [9, 100, 101, 102, 103, 104]
    assert enc.labels == [IGNORE_INDEX, 100, 101, 102, 103, 104]
    assert truncate_pair([1, 2], [3], max_length=6).input_ids == [1, 2, 3]


def test_text_examples_are_cut_to_max_length(tokenizer):
    (enc,) = encode_examples([read_one({"text": "word " * 100})], tokenizer, max_length=16)
    assert len(enc.input_ids) == 16 and enc.labels == enc.input_ids


def test_epoch_batches_cover_every_example_once_deterministically_and_bucket_by_length():
    lengths = [i % 17 + 1 for i in range(50)]
    batches = epoch_batches(lengths, 4, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert batches == epoch_batches(lengths, 4, seed=3, epoch=0)
    assert batches != epoch_batches(lengths, 4, seed=3, epoch=1)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    unbucketed = [list(range(50))[j:j + 4] for j in range(0, 50, 4)]
    assert padding(batches) * 3 < padding(unbucketed)


@pytest.mark.parametrize("line, message", [
    ("not json", "line 2: not JSON"),
    ('{"prompt": "a"}', "line 2: expected keys"),
    ('{"text": ""}', "line 2: text must be"),
    ('{"prompt": 1, "completion": "x"}', "line 2: prompt and completion must be strings"),
    ("[1, 2]", "line 2: expected a JSON object"),
])
def test_malformed_examples_name_the_line(tmp_path, line, message):
    path = tmp_path / "ex.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(ExamplesError, match=message):
        read_examples(path)


def test_empty_or_missing_examples_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ExamplesError, match="no examples"):
        read_examples(tmp_path / "empty.jsonl")
    with pytest.raises(ExamplesError, match="cannot read"):
        read_examples(tmp_path / "missing.jsonl")


def test_config_defaults_and_validation():
    cfg = TrainConfig.from_dict({"base_model": "b", "examples": "e", "out_dir": "o"})
    assert (cfg.rank, cfg.alpha, cfg.epochs, cfg.batch_size, cfg.max_length, cfg.precision) == (8, 16, 1, 4, 1024, "auto")
    assert cfg.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for bad, message in [({"rank": 0}, "rank"), ({"precision": "fp16"}, "precision"), ({"lora": 1}, "unknown"),
                         ({"learning_rate": -1}, "learning_rate"), ({"target_modules": []}, "target_modules")]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_dict({"base_model": "b", "examples": "e", "out_dir": "o", **bad})
    with pytest.raises(ConfigError, match="out_dir"):
        TrainConfig.from_dict({"base_model": "b", "examples": "e"})
    # The resume fingerprint ignores threads and output paths, not hyperparameters.
    same = TrainConfig.from_dict({"base_model": "b", "examples": "e", "out_dir": "x", "threads": 7})
    other = TrainConfig.from_dict({"base_model": "b", "examples": "e", "out_dir": "o", "rank": 4})
    assert cfg.fingerprint("h") == same.fingerprint("h") != other.fingerprint("h")
    assert cfg.fingerprint("h") != cfg.fingerprint("h2")


def test_auto_precision_on_cpu_follows_native_bf16_flags(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512f", "avx512bw"})
    assert device.choose("auto") == ("cpu", "fp32")
    assert device.choose("bf16") == ("cpu", "bf16")
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert device.choose("auto") == ("cpu", "bf16")
    monkeypatch.setattr(device, "cpu_flags", lambda: {"amx_bf16"})
    assert device.choose("auto") == ("cpu", "bf16")
    assert device.choose("fp32") == ("cpu", "fp32")


def test_learning_rate_schedule():
    assert [lr_at(s, 4, 1.0, 0.0) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    warm = [lr_at(s, 40, 1.0, 0.05) for s in range(40)]  # 2 warm-up steps
    assert warm[:3] == [0.5, 1.0, 1.0] and warm[-1] == pytest.approx(1 / 38)


def test_events_are_single_json_lines_without_nan():
    line = event_line({"event": "progress", "loss": float("nan"), "note": "a\nb"})
    assert "\n" not in line and json.loads(line) == {"event": "progress", "loss": None, "note": "a\nb"}


def test_the_gateway_reads_back_each_event_line_and_nothing_else():
    event = {"event": "done", "final_loss": 0.5, "loss_curve": [1.0, 0.5]}
    assert parse_event(event_line(event).encode() + b"\n") == event
    for noise in (b"Loading checkpoint shards: 100%\n", b"[1, 2]\n", b"\n"):
        assert parse_event(noise) == {}
