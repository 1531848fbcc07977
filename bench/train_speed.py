"""Training tokens/s: graft's trainer (training.trainer.train) against a plain PEFT loop written
inline here, on the same examples; optionally fp32 against bf16 autocast for the trainer.

    .venv/bin/python bench/train_speed.py                 # ~3 min on 2 idle CPU cores, ~6 busy
    .venv/bin/python bench/train_speed.py --precisions --precision-steps 2 # + fp32 vs bf16 (~3 min more)
    .venv/bin/python bench/train_speed.py --rounds 4 --steps 4 --targets q_proj v_proj o_proj

Examples: 64 synthetic reader-style prompt/completion pairs of ~500 tokens from Debian's git-doc
pages (/usr/share/doc/git-doc/*.txt): the prompt is the base model's chat template around a
system line, a passage of ~420 tokens and a question; the completion is one sentence of the
passage. Only the completion (+ eos) is scored, as in the gateway's `reader` recipe.

Arms, each with the same model (SmolLM2-135M-Instruct, fp32 weights), LoRA rank/alpha/targets,
batch size, threads and precision:
- trainer: training.trainer.train(config) in this process; its tokens/s is the done event's (real
  tokens over the training steps' wall time; model loading and the adapter save excluded).
- plain: tokenize prompt + completion + eos, labels -100 on the prompt, batches in file order,
  right-padded, `model(input_ids, attention_mask, labels).loss`, backward, AdamW step; timed over
  the same scope (collate, forward, backward, step, loss.item()).
Tokens are counted the same way in both arms (the examples' real tokens, padding excluded).
Rounds alternate the arms' order (ABBA) to cancel drift on a shared machine; each round gives both
arms the same slice of examples. The ratio is trainer tokens/s over plain tokens/s, summed over
rounds (goal >= 0.95).

Both arms run with OMP_WAIT_POLICY=PASSIVE (as `python -m training.run` does; set here before
torch is imported unless the environment sets it) and torch.set_num_threads(--threads). This
process is not niced (the trainer process is), so that both arms compete equally.

Measured 2026-11-29 on the 2-core VM (Xeon @ 2.80GHz, AVX-512 without avx512_bf16/AMX, torch
2.13.0+cpu, 2 threads, fp32 as "auto" picks here), 64 examples of mean 470 tokens (219-554),
rank 8 on all seven projections, batch 4, 2 rounds x 4 steps per arm:

| run | trainer tokens/s | plain tokens/s | ratio |
|---|---|---|---|
| with `--precisions --precision-steps 2`, other sessions' tests beside (load ~3.5) | 97.4 | 80.9 | 1.204 |
| quieter (load ~0.5-2) | 208.3 | 171.2 | **1.217** |

Per round (quiet run): trainer 219.7 / 197.6, plain 189.7 / 155.5 tokens/s. The gain is the
output head skipped on prompt tokens (about a fifth of the FLOPs per token; roughly 90 % of these
examples' tokens are prompt); with {"text"} examples there is nothing to skip and the two loops do
the same work. The arms' per-step losses differ only because the trainer shuffles and buckets
its batches; on one identical batch (a smoke run, one step per arm) both gave loss 1.169.

`--precisions` (trainer, same 8 examples, 2 steps, ABBA, busy machine): fp32 113.7 / 122.0
tokens/s, bf16 autocast 67.5 / 53.2 tokens/s, bf16/fp32 = 0.505; losses fp32 [0.7176, 0.6085],
bf16 [0.7160, 0.6354]. bf16 is slower on this CPU (no native bf16) and its loss drifts, so
"auto" picks fp32 here (training.device).
"""

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training.protocol import ALL_PROJECTIONS  # noqa: E402  (after the repository is on the path)

DEFAULT_BASE_MODEL = REPO / "data" / "models" / "SmolLM2-135M-Instruct"
GIT_DOC = Path("/usr/share/doc/git-doc")
SYSTEM = "Answer the question from the passage below and quote it."
SENTENCE = re.compile(r"(?<=[.!?])\s+")


def prose_paragraphs(limit_pages: int = 200) -> list[list[str]]:
    """Paragraphs of plain prose (>= 12 words, no markup-heavy lines), grouped by page."""
    if not GIT_DOC.is_dir():
        sys.exit(f"{GIT_DOC} is missing: install Debian's git-doc package (apt-get install git-doc)")
    pages = []
    for path in sorted(GIT_DOC.glob("*.txt"))[:limit_pages]:
        paragraphs = []
        for block in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            text = " ".join(block.split())
            if len(text.split()) >= 12 and not re.search(r"[=\-]{4,}|^\s*[\[*$]", text):
                paragraphs.append(text)
        if len(paragraphs) >= 4:
            pages.append(paragraphs)
    return pages


def build_examples(tokenizer, n: int, passage_tokens: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    pages = prose_paragraphs()
    rng.shuffle(pages)
    examples = []
    for i in range(n):
        paragraphs = pages[i % len(pages)]
        start = rng.randrange(len(paragraphs))
        passage, count = [], 0
        for paragraph in paragraphs[start:] + paragraphs[:start]:
            passage.append(paragraph)
            count += len(tokenizer(paragraph, add_special_tokens=False)["input_ids"])
            if count >= passage_tokens:
                break
        text = "\n\n".join(passage)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:passage_tokens]
        text = tokenizer.decode(ids)
        sentences = [s for s in SENTENCE.split(text) if 8 <= len(s.split()) <= 40] or [text[:200]]
        answer = rng.choice(sentences)
        topic = " ".join(answer.split()[:6])
        question = f"What does the passage say about \"{topic}\"?"
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Passage:\n{text}\n\nQuestion: {question}"}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        examples.append({"prompt": prompt, "completion": answer})
    return examples


def plain_loop(base_model: Path, examples: list[dict], args, precision: str) -> dict:
    """A plain PEFT training loop; returns tokens, seconds and per-step losses."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                             target_modules=list(args.targets), task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    rows = []
    for ex in examples:
        prompt = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(ex["completion"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((prompt + answer, [-100] * len(prompt) + answer))
    tokens, seconds, losses = 0, 0.0, []
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    for start in range(0, len(rows), args.batch_size):
        t0 = time.perf_counter()
        batch = rows[start:start + args.batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        with autocast:
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        seconds += time.perf_counter() - t0
        tokens += sum(len(ids) for ids, _ in batch)
    return {"tokens": tokens, "seconds": seconds, "losses": losses}


def trainer_arm(base_model: Path, examples: list[dict], args, precision: str, workdir: Path) -> dict:
    from training.trainer import train

    folder = Path(tempfile.mkdtemp(dir=workdir))
    path = folder / "examples.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    done = train({"base_model": str(base_model), "examples": str(path), "out_dir": str(folder / "adapter"),
                  "rank": args.rank, "alpha": 2 * args.rank, "target_modules": list(args.targets),
                  "epochs": 1, "learning_rate": 2e-4, "batch_size": args.batch_size, "max_length": 1024,
                  "threads": args.threads, "seed": 0, "precision": precision, "warmup_ratio": 0.0})
    return {"tokens": done["tokens"], "seconds": done["seconds"], "losses": done["loss_curve"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", type=Path, default=DEFAULT_BASE_MODEL)
    parser.add_argument("--examples", type=int, default=64, help="synthetic examples built")
    parser.add_argument("--passage-tokens", type=int, default=420)
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each: both arms, same slice)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per arm per round")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="+", default=list(ALL_PROJECTIONS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--precisions", action="store_true",
                        help="also train the trainer in fp32 and in bf16 on the same slice and compare")
    parser.add_argument("--precision-steps", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from training import device

    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    examples = build_examples(tokenizer, args.examples, args.passage_tokens, seed=5)
    lengths = [len(tokenizer(e["prompt"] + e["completion"], add_special_tokens=False)["input_ids"]) for e in examples]
    _, precision = device.choose(args.precision)
    print(f"{len(examples)} examples, mean {sum(lengths) / len(lengths):.0f} tokens (min {min(lengths)}, "
          f"max {max(lengths)}); rank {args.rank} on {','.join(args.targets)}; batch {args.batch_size}; "
          f"threads {args.threads}; precision {precision} ({args.precision}); "
          f"{args.rounds} rounds x {args.steps} steps per arm; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}",
          flush=True)
    per_round = args.steps * args.batch_size
    workdir = Path(tempfile.mkdtemp(prefix="train-speed-"))
    totals = {"trainer": [0, 0.0], "plain": [0, 0.0]}
    for r in range(args.rounds):
        start = (r * per_round) % len(examples)
        chunk = (examples + examples)[start:start + per_round]
        order = ["trainer", "plain"] if r % 2 == 0 else ["plain", "trainer"]
        for arm in order:
            if arm == "trainer":
                result = trainer_arm(args.base_model, chunk, args, precision, workdir)
            else:
                result = plain_loop(args.base_model, chunk, args, precision)
            totals[arm][0] += result["tokens"]
            totals[arm][1] += result["seconds"]
            print(f"round {r + 1} {arm:7s}: {result['tokens']} tokens in {result['seconds']:.1f} s = "
                  f"{result['tokens'] / result['seconds']:.1f} tokens/s; losses "
                  f"{[round(x, 3) for x in result['losses']]}", flush=True)
    rates = {arm: t / s for arm, (t, s) in totals.items()}
    ratio = rates["trainer"] / rates["plain"]
    print(f"trainer {rates['trainer']:.1f} tokens/s, plain PEFT loop {rates['plain']:.1f} tokens/s: "
          f"ratio {ratio:.3f} (goal >= 0.95: {'PASS' if ratio >= 0.95 else 'FAIL'})", flush=True)

    if args.precisions:
        chunk = examples[:args.precision_steps * args.batch_size]
        results = {}
        for prec in ("fp32", "bf16", "bf16", "fp32"):  # ABBA
            result = trainer_arm(args.base_model, chunk, args, prec, workdir)
            agg = results.setdefault(prec, {"tokens": 0, "seconds": 0.0, "losses": result["losses"]})
            agg["tokens"] += result["tokens"]
            agg["seconds"] += result["seconds"]
            print(f"trainer {prec}: {result['tokens'] / result['seconds']:.1f} tokens/s; losses "
                  f"{[round(x, 4) for x in result['losses']]}", flush=True)
        fp32, bf16 = results["fp32"], results["bf16"]
        gap = max(abs(a - b) for a, b in zip(fp32["losses"], bf16["losses"]))
        speed = (bf16["tokens"] / bf16["seconds"]) / (fp32["tokens"] / fp32["seconds"])
        print(f"bf16 / fp32 tokens/s: {speed:.3f}; largest per-step loss gap {gap:.4f} "
              f"(final fp32 {fp32['losses'][-1]:.4f}, bf16 {bf16['losses'][-1]:.4f}); "
              f"auto on this CPU picks {device.choose('auto')[1]}", flush=True)


if __name__ == "__main__":
    main()
