"""The in-process API: the loss it optimizes, and resuming from a checkpoint."""

import pytest
import torch

from training.protocol import Cancelled
from training.trainer import _loss, train


def test_loss_on_labelled_positions_equals_transformers_loss(base_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from training.data import Example, collate, encode_examples

    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    encoded = encode_examples([Example("<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n", "Ada.", None),
                               Example(None, None, "A longer plain text example with more tokens in it.")],
                              tokenizer, max_length=64)
    input_ids, mask, labels = collate(encoded, tokenizer.pad_token_id)
    assert mask is not None
    with torch.no_grad():
        ours = _loss(model.get_decoder(), model.get_output_embeddings(), input_ids, mask, labels)
        reference = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    assert ours.item() == pytest.approx(reference.item(), rel=1e-4)


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(tmp_path, make_config):
    # 6 examples, batch 2, 2 epochs: 6 steps; a checkpoint at each epoch's end (step 3).
    # One thread in-process: pytest's OpenMP threads spin (run.py sets OMP_WAIT_POLICY=PASSIVE for
    # the real process), and two spinning threads on a busy 2-core machine are ~10x slower.
    base = {"epochs": 2, "checkpoint_dir": str(tmp_path / "ckpt"), "threads": 1}
    first_events = []

    def stop_after_checkpoint():
        return any(e["event"] == "checkpoint" for e in first_events)

    with pytest.raises(Cancelled):
        train(make_config(**base), first_events.append, should_stop=stop_after_checkpoint)
    assert [e["step"] for e in first_events if e["event"] == "checkpoint"] == [3]
    assert not (tmp_path / "adapter").exists()

    resumed_events = []
    done = train(make_config(**base, resume=True), resumed_events.append)
    start = resumed_events[0]
    assert start["event"] == "start" and start["step"] == 3 and start["steps"] == 6
    progress = [e["step"] for e in resumed_events if e["event"] == "progress"]
    assert progress[0] == 4 and progress[-1] == 6
    assert len(done["loss_curve"]) == 6
    for e in first_events:  # progress is throttled to one a second, but step 1 is always there
        if e["event"] == "progress":
            assert done["loss_curve"][e["step"] - 1] == e["loss"]

    straight = train(make_config(out_dir=str(tmp_path / "straight"), epochs=2, threads=1), lambda e: None)
    assert done["loss_curve"] == pytest.approx(straight["loss_curve"], rel=1e-3)
    assert done["tokens"] == straight["tokens"]


def test_resume_without_a_checkpoint_starts_fresh_and_a_mismatch_is_refused(tmp_path, make_config):
    from training import checkpoint
    from training.protocol import ConfigError

    checkpoint.save(tmp_path / "ckpt", {"fingerprint": "another config", "step": 1})
    with pytest.raises(ConfigError, match="another config"):
        train(make_config(checkpoint_dir=str(tmp_path / "ckpt"), resume=True, threads=1))
