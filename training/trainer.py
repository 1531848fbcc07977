"""The training loop: PEFT LoRA on a causal LM, AdamW, completion-only loss.

    train(config: dict | TrainConfig, on_event: Callable[[dict], None] | None = None, *,
          should_stop: Callable[[], bool] | None = None, gate: CommitGate | None = None) -> dict

runs one training and returns the "done" event (see training.protocol for the events). It raises
ConfigError / ExamplesError for bad input, Cancelled when should_stop() turns true (checked before
each step and before the adapter is committed); nothing is written to out_dir unless it returns.

Method:
- LoraConfig(r=rank, lora_alpha=alpha, target_modules, lora_dropout=0, task CAUSAL_LM) on the base
  model loaded in fp32; torch.manual_seed(seed) before the LoRA init.
- AdamW (weight decay 0) on the LoRA weights; learning rate: linear warm-up over the first
  int(steps * warmup_ratio) steps (none for short runs), then linear decay towards 0 (the last
  step uses learning_rate / (steps - warmup)).
- One optimizer step per batch of batch_size examples (no accumulation); batches are bucketed by
  length and right-padded (training.data).
- Loss: mean token cross-entropy over the batch's labelled tokens (the same value as
  transformers' `labels=` loss), but the output head runs only on labelled positions: the
  decoder's hidden states are gathered where a label is, then lm_head + cross-entropy. For
  prompt/completion examples this skips most of the 576 x 49152 head (about a fifth of the
  model's FLOPs per token) and its full-vocabulary logits for prompt tokens.
- bf16 is autocast (training.device); LoRA weights and optimizer state stay fp32.
- Tokens counted are the real (non-padding) tokens of each batch; tokens_per_s is over the
  training loop's time (model loading excluded), cumulated across a resume.
- Adapter: PEFT save_pretrained(safe_serialization=True) into a temporary folder beside out_dir
  (".<name>.tmp-<pid>"), fsynced, then renamed to out_dir; base_model_name_or_path is the
  config's base_model string.
- Checkpoints (training.checkpoint): every checkpoint_every steps and at each epoch's end (not
  after the last step); resume=true continues from one whose fingerprint matches the config
  and examples (a mismatch is an error; no checkpoint yet means a fresh start).
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from training import checkpoint as ckpt
from training import data, device
from training.durable import fsync_dir, fsync_file
from training.protocol import Cancelled, ConfigError, ExamplesError, TrainConfig

MAX_CURVE_POINTS = 500
FINAL_LOSS_STEPS = 10
PROGRESS_EVERY_S = 1.0


class CommitGate:
    """Lets another thread cancel a training up to, but never after, the moment its adapter is
    renamed into out_dir (run.py's SIGTERM handler uses it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.committed = False

    def commit(self, action: Callable[[], None], should_stop: Callable[[], bool]) -> None:
        with self._lock:
            if should_stop():
                raise Cancelled()
            action()
            self.committed = True

    def cancel(self) -> bool:
        """True when nothing was committed; the gate then stays closed for good (the caller is
        about to exit), so no commit can follow. False when the adapter is already in place."""
        self._lock.acquire()
        if self.committed:
            self._lock.release()
            return False
        return True


def temp_dir_for(out_dir: str | Path, pid: int | None = None) -> Path:
    out = Path(out_dir).absolute()
    return out.parent / f".{out.name}.tmp-{os.getpid() if pid is None else pid}"


def lr_at(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    """Learning rate of 0-based step `step` of `total`."""
    warmup = int(total * warmup_ratio)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (total - step) / (total - warmup)


def train(config: dict | TrainConfig, on_event: Callable[[dict], None] | None = None, *,
          should_stop: Callable[[], bool] | None = None, gate: CommitGate | None = None) -> dict:
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    emit = on_event or (lambda event: None)
    stop = should_stop or (lambda: False)
    gate = gate or CommitGate()

    out_dir = Path(cfg.out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"out_dir {out_dir} exists and is not an empty folder")
    base_dir = Path(cfg.base_model)
    if not base_dir.is_dir():
        raise ConfigError(f"base_model {base_dir} is not a folder")
    examples, examples_sha = data.read_examples(cfg.examples)

    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, emit, stop, gate, out_dir, base_dir, examples, examples_sha)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: TrainConfig, emit, stop, gate: CommitGate, out_dir: Path, base_dir: Path,
           examples: list, examples_sha: str) -> dict:
    import torch
    from peft import (
        LoraConfig,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    encoded = data.encode_examples(examples, tokenizer, cfg.max_length)
    for number, e in enumerate(encoded, start=1):
        if not any(label != data.IGNORE_INDEX for label in e.labels[1:]):
            raise ExamplesError(f"example {number} has no token to learn (too short)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths = [len(e.input_ids) for e in encoded]

    dev, precision = device.choose(cfg.precision)
    per_epoch = data.steps_per_epoch(len(encoded), cfg.batch_size)
    total = per_epoch * cfg.epochs
    fingerprint = cfg.fingerprint(examples_sha)

    resumed = None
    if cfg.checkpoint_dir:
        ckpt.remove_stale_temporaries(cfg.checkpoint_dir)
        if cfg.resume:
            resumed = ckpt.load(cfg.checkpoint_dir)
            if resumed is not None and resumed.get("fingerprint") != fingerprint:
                raise ConfigError(f"the checkpoint in {cfg.checkpoint_dir} is for another config or examples file")

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:  # e.g. a target module the model lacks
        raise ConfigError(f"cannot apply LoRA: {exc}") from None
    model.peft_config["default"].base_model_name_or_path = cfg.base_model
    model.to(dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)

    start_step, curve, tokens, seconds = 0, [], 0, 0.0
    if resumed is not None:
        set_peft_model_state_dict(model, resumed["lora"])
        optimizer.load_state_dict(resumed["optimizer"])
        start_step, curve = int(resumed["step"]), list(resumed["loss_curve"])
        tokens, seconds = int(resumed["tokens"]), float(resumed["seconds"])

    base = model.get_base_model()
    decoder, head = base.get_decoder(), base.get_output_embeddings()

    emit({"event": "start", "steps": total, "examples": len(encoded), "device": dev,
          "precision": precision, "step": start_step, "threads": cfg.threads,
          "epochs": cfg.epochs, "steps_per_epoch": per_epoch})

    run_started = time.perf_counter()
    last_emit = 0.0
    step = start_step
    while step < total:
        epoch = step // per_epoch
        batches = data.epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        for batch in batches[step - epoch * per_epoch:]:
            if stop():
                raise Cancelled()
            lr = lr_at(step, total, cfg.learning_rate, cfg.warmup_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            input_ids, mask, labels = data.collate([encoded[i] for i in batch], pad_id)
            input_ids, labels = input_ids.to(dev), labels.to(dev)
            mask = mask.to(dev) if mask is not None else None
            with device.autocast(dev, precision):
                loss = _loss(decoder, head, input_ids, mask, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            seconds += time.perf_counter() - t0
            if not math.isfinite(value):
                raise RuntimeError(f"the loss is not finite at step {step + 1}: {value}")
            step += 1
            curve.append(value)
            tokens += sum(lengths[i] for i in batch)
            now = time.perf_counter()
            if step == start_step + 1 or step == total or now - last_emit >= PROGRESS_EVERY_S:
                last_emit = now
                done_here = step - start_step
                emit({"event": "progress", "step": step, "steps": total, "epoch": epoch + 1,
                      "loss": value, "tokens": tokens, "tokens_per_s": tokens / seconds if seconds else 0.0,
                      "eta_s": (now - run_started) / done_here * (total - step), "lr": lr})
            if cfg.checkpoint_dir and step < total and (step % cfg.checkpoint_every == 0 or step % per_epoch == 0):
                ckpt.save(cfg.checkpoint_dir, {
                    "fingerprint": fingerprint, "step": step,
                    "lora": {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()},
                    "optimizer": optimizer.state_dict(), "loss_curve": curve, "tokens": tokens,
                    "seconds": seconds})
                emit({"event": "checkpoint", "step": step})

    if stop():
        raise Cancelled()
    _save_adapter(model, out_dir, gate, stop)

    every = max(1, math.ceil(len(curve) / MAX_CURVE_POINTS))
    points = [sum(curve[i:i + every]) / len(curve[i:i + every]) for i in range(0, len(curve), every)]
    tail = curve[-FINAL_LOSS_STEPS:]
    done = {"event": "done", "loss_curve": points, "loss_curve_every": every,
            "final_loss": sum(tail) / len(tail) if tail else None, "tokens": tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds if seconds else 0.0,
            "steps": total, "out_dir": str(out_dir)}
    emit(done)
    return done


def _loss(decoder, head, input_ids, mask, labels):
    """Mean cross-entropy of the labelled next tokens, the head applied to labelled positions only."""
    import torch.nn.functional as F

    hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != data.IGNORE_INDEX
    logits = head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def _save_adapter(model, out_dir: Path, gate: CommitGate, stop: Callable[[], bool]) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temp_dir_for(out_dir)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for path in tmp.iterdir():
            fsync_file(path)
        fsync_dir(tmp)

        def rename():
            os.rename(tmp, out_dir)  # out_dir is absent or empty (checked at start)
            fsync_dir(out_dir.parent)

        gate.commit(rename, stop)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
