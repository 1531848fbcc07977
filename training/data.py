"""Training examples: read the JSONL, tokenize, bucket into batches, collate with masked labels.

Tokenization uses the base model's tokenizer with add_special_tokens=False: the gateway already
rendered the prompt (chat template included), so nothing is added in front. A prompt/completion
example is tokenized as two pieces, prompt then completion + eos, exactly as inference sees them
(the prompt is tokenized by vLLM, the answer is generated after it). Over max_length, the
prompt's left side is dropped so that the completion is kept (a completion longer than
max_length - 1 keeps its first max_length - 1 tokens after the prompt's last token). A text
example is cut to its first max_length tokens; no eos is appended to it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from training.protocol import ExamplesError

IGNORE_INDEX = -100
# Examples per sorting window: batches are cut from windows of batch_size * BUCKET_WINDOW
# examples sorted by length, so a batch holds examples of similar length (little padding)
# while the order across the epoch stays random.
BUCKET_WINDOW = 32


@dataclass(frozen=True)
class Example:
    prompt: str | None
    completion: str | None
    text: str | None


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken


def read_examples(path: str | Path) -> tuple[list[Example], str]:
    """The examples of a JSONL file and the file's sha256; ExamplesError on anything malformed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExamplesError(f"cannot read examples {path}: {exc}") from None
    examples = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError as exc:
            raise ExamplesError(f"examples line {number}: not JSON ({exc})") from None
        examples.append(_example(item, number))
    if not examples:
        raise ExamplesError(f"no examples in {path}")
    return examples, hashlib.sha256(data).hexdigest()


def _example(item, number: int) -> Example:
    if not isinstance(item, dict):
        raise ExamplesError(f"examples line {number}: expected a JSON object")
    keys = set(item) - {"meta"}  # meta: where the gateway got the example from; not trained on
    if keys == {"text"}:
        if not isinstance(item["text"], str) or not item["text"]:
            raise ExamplesError(f"examples line {number}: text must be a non-empty string")
        return Example(None, None, item["text"])
    if keys == {"prompt", "completion"}:
        if not isinstance(item["prompt"], str) or not isinstance(item["completion"], str):
            raise ExamplesError(f"examples line {number}: prompt and completion must be strings")
        return Example(item["prompt"], item["completion"], None)
    raise ExamplesError(
        f"examples line {number}: expected keys {{prompt, completion}} or {{text}}, got {sorted(keys)}")


def encode_examples(examples: list[Example], tokenizer, max_length: int) -> list[Encoded]:
    """Token ids and labels of each example (see the module docstring for truncation)."""
    eos = tokenizer.eos_token
    if eos is None:
        raise ExamplesError("the base model's tokenizer has no eos token")
    texts, pairs = [], []
    for i, ex in enumerate(examples):
        if ex.text is not None:
            texts.append(i)
        else:
            pairs.append(i)
    encoded: list[Encoded | None] = [None] * len(examples)
    if texts:
        ids = _tokenize(tokenizer, [examples[i].text for i in texts])
        for i, seq in zip(texts, ids):
            seq = seq[:max_length]
            encoded[i] = Encoded(seq, list(seq))
    if pairs:
        prompts = _tokenize(tokenizer, [examples[i].prompt for i in pairs])
        completions = _tokenize(tokenizer, [examples[i].completion + eos for i in pairs])
        for i, prompt, completion in zip(pairs, prompts, completions):
            encoded[i] = truncate_pair(prompt, completion, max_length)
    return encoded  # type: ignore[return-value]


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def truncate_pair(prompt: list[int], completion: list[int], max_length: int) -> Encoded:
    """prompt + completion within max_length, dropping the prompt's left side first."""
    room = max_length - len(completion)
    if room < 1 and prompt:
        # The completion alone is too long: keep the prompt's last token as its context.
        prompt, completion = prompt[-1:], completion[: max_length - 1]
    elif room < 0:
        completion = completion[:max_length]
    else:
        prompt = prompt[len(prompt) - min(room, len(prompt)):]
    return Encoded(prompt + completion, [IGNORE_INDEX] * len(prompt) + list(completion))


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices of each batch of one epoch, deterministic in (seed, epoch) so that a
    resumed run sees the same order: shuffle, sort windows of batch_size * BUCKET_WINDOW by
    length, cut batches, shuffle the batches."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * BUCKET_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)


def collate(batch: list[Encoded], pad_id: int):
    """(input_ids, attention_mask or None, labels) tensors, right-padded to the longest example.
    The attention mask is None when nothing is padded (the causal fast path)."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
        mask[row, :n] = 1
    padded = any(len(e.input_ids) < width for e in batch)
    return input_ids, (mask if padded else None), labels
