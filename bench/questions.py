"""Training questions on real text: how many git-doc chunks give a kept, well-formed question
written by the base model, the old way vs the new one, with the wall time and engine calls each took.

    .venv/bin/python -m bench.questions [--chunks 80] [--engine-url URL]

Chunks: Debian's git-doc HTML pages, extracted and chunked exactly as graft's ingestion does
(bench/git_doc_text.py), a seeded sample of `--chunks` of them. On a real vLLM (a local one on CPU
unless --engine-url), the base model (SmolLM2-135M-Instruct):

  - old: the instruction-only prompt, greedy, one chunk at a time, kept when the answer is a span
    of the chunk (graft before issue 31);
  - new: service/questions.py as a training runs it: a few-shot prompt (answer copied first, then
    the question) about the chunk's prose sentences in order (up to four, one request each, until
    one gives a good pair), `--candidates` sampled answers per request (`n`), `--concurrency`
    requests in flight, the best candidate that passes the span check and the question checks
    (`question_problem`).

`--engine transformers` samples the same model with Hugging Face `generate` in this process instead
(same prompts, temperature and token budgets; no vLLM, so wall times are not comparable): for when
no engine can be started.

Yield is the share of chunks with a kept model-written question. The old way's kept questions are
also put through the new checks ("well-formed"), since its yield counts questions such as "What
is If this value?" that no check stopped. Templates (definitions) are counted apart for both.
"""

import argparse
import asyncio
import os
import random
import re
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import DEFAULT_BASE_MODEL, engine_url  # noqa: E402
from bench.git_doc_text import page_stems, select_pages  # noqa: E402

OLD_PROMPT = ("Passage:\n{chunk}\n\nWrite one question that this passage answers, then the answer "
              "copied word for word from the passage.\nFormat:\nQ: <question>\nA: <answer>")
_OLD_QA = re.compile(r"Q:\s*(?P<q>[^\n]+\?)\s*\n+\s*A:\s*(?P<a>[^\n]+)", re.IGNORECASE)
_OLD_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_OLD_DEFINITION = re.compile(r"^(?P<subject>[A-Z][\w' -]{2,60}?) (?P<verb>is|are|was|were) (?P<rest>[^.]{3,200})\.?$")


class TransformersClient:
    """The base model through transformers' generate, answering as an OpenAI chat completion (one at a time)."""

    def __init__(self, folder: str):
        import threading

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.lock = threading.Lock()

    def _generate(self, payload: dict) -> dict:
        import torch

        prompt = self.tokenizer.apply_chat_template(payload["messages"], tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        n, temperature = payload.get("n", 1), payload.get("temperature", 0)
        kwargs = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature else \
            {"do_sample": False}
        with self.lock, torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=payload["max_tokens"], num_return_sequences=n,
                                      pad_token_id=self.tokenizer.eos_token_id, **kwargs)
        texts = self.tokenizer.batch_decode(out[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return {"choices": [{"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)]}

    async def complete(self, _path: str, payload: dict) -> dict:
        return await asyncio.to_thread(self._generate, payload)

    async def model_names(self) -> list[str]:
        return ["SmolLM2-135M-Instruct"]

    async def aclose(self) -> None:
        pass


def git_doc_chunks(n: int, seed: int) -> list[str]:
    from indexer.embedding import Embedder
    from service.settings import Settings

    settings = Settings()
    embedder = Embedder.load(settings.embedding_model)
    pages, _ = select_pages(page_stems(), "html", 4 * n, 40, embedder, settings, set())
    chunks = [c for p in pages for c in p.chunks]
    random.Random(seed).shuffle(chunks)
    return chunks[:n]


def old_template(text: str) -> list[str]:
    found = []
    for sentence in _OLD_SENTENCE.split(text.replace("\n", " ")):
        match = _OLD_DEFINITION.match(sentence.strip())
        if match:
            found.append(f"What {match['verb']} {match['subject'].strip()}?")
    return found


async def old_way(client, model: str, chunks: list[str]) -> dict:
    from service.questions import question_problem
    from service.training_data import fold

    kept, well_formed, samples, started = 0, 0, [], time.perf_counter()
    for chunk in chunks:
        payload = {"model": model, "messages": [{"role": "user", "content": OLD_PROMPT.format(chunk=chunk)}],
                   "max_tokens": 96, "temperature": 0}
        output = (await client.complete("/v1/chat/completions", payload))["choices"][0]["message"]["content"] or ""
        match = _OLD_QA.search(output)
        if match is None:
            continue
        answer = match["a"].strip().strip('"').rstrip(".")
        if len(answer) >= 2 and fold(answer) in fold(chunk):
            kept += 1
            well_formed += question_problem(match["q"].strip(), answer, chunk) is None
            samples.append((match["q"].strip(), answer))
    templates = sum(bool(old_template(c)) for c in chunks)
    return {"kept": kept, "well_formed": well_formed, "calls": len(chunks), "seconds": time.perf_counter() - started,
            "templates": templates, "samples": samples}


async def new_way(client, model: str, chunks: list[str], candidates: int, concurrency: int) -> dict:
    from service.questions import QuestionWriter, sampling_payload
    from service.training_data import SourceChunk

    async def write(messages: list[dict], n: int) -> list[str]:
        answer = await client.complete("/v1/chat/completions", sampling_payload(model, messages, n))
        return [(c.get("message") or {}).get("content") or "" for c in answer["choices"]]

    writer = QuestionWriter(write, candidates=candidates, concurrency=concurrency)
    sources = [SourceChunk(i, f"chunk-{i}", text) for i, text in enumerate(chunks)]
    started = time.perf_counter()
    pairs, stats = await writer.questions(sources, max_examples=10 * len(sources), sample_size=0)
    seconds = time.perf_counter() - started
    model_pairs = [qa for qa in pairs if qa.origin == "model"]
    return {"kept": stats.kept_chunks.get("model", 0), "well_formed": len(model_pairs), "calls": stats.calls,
            "seconds": seconds, "templates": stats.kept_chunks.get("template", 0),
            "samples": [(qa.question, qa.answer) for qa in model_pairs]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=80)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--samples", type=int, default=20, help="model-written questions printed")
    parser.add_argument("--skip-old", action="store_true")
    parser.add_argument("--engine-url")
    parser.add_argument("--engine", choices=("vllm", "transformers"), default="vllm")
    args = parser.parse_args()
    import tempfile
    from pathlib import Path

    from service.engine.client import EngineClient

    chunks = git_doc_chunks(args.chunks, args.seed)
    print(f"git-doc: {len(chunks)} chunks (seed {args.seed}); engine {args.engine}; "
          f"new way: {args.candidates} candidates per request, "
          f"{args.concurrency} requests in flight", flush=True)
    if args.engine == "transformers":
        client = TransformersClient(str(DEFAULT_BASE_MODEL))
        model = (await client.model_names())[0]
        old = None if args.skip_old else await old_way(client, model, chunks)
        new = await new_way(client, model, chunks, args.candidates, args.concurrency)
    else:
        with tempfile.TemporaryDirectory(prefix="graft-bench-questions-") as tmp:
            async with engine_url(args.engine_url, Path(tmp), DEFAULT_BASE_MODEL) as url:
                client = EngineClient(url, request_timeout_s=600)
                model = (await client.model_names())[0]
                try:
                    old = None if args.skip_old else await old_way(client, model, chunks)
                    new = await new_way(client, model, chunks, args.candidates, args.concurrency)
                finally:
                    await client.aclose()

    n = len(chunks)
    rows = [("chunks with a kept model question", "kept"), ("  of them well-formed (new checks)", "well_formed"),
            ("chunks with a template question", "templates"), ("engine calls", "calls")]
    print(f"\n{'':<38} {'old':>10} {'new':>10}")
    for label, key in rows:
        if old is None:
            old_cell = ""
        else:
            old_cell = f"{old[key]:>4} {old[key] / n:>5.0%}" if key != "calls" else f"{old[key]:>10}"
        new_cell = f"{new[key]:>4} {new[key] / n:>5.0%}" if key != "calls" else f"{new[key]:>10}"
        print(f"{label:<38} {old_cell:>10} {new_cell:>10}")
    old_s = old["seconds"] if old else float("nan")
    print(f"{'wall time (s)':<38} {old_s:>10.1f} {new['seconds']:>10.1f}")
    goal = new["well_formed"] / n
    verdict = "PASS" if goal >= 0.5 else "FAIL"
    print(f"\nyield of kept well-formed model questions: {goal:.0%} -> goal >= 50 %: {verdict}")
    print(f"\n{args.samples} model-written questions (new way), question -> answer:")
    for question, answer in new["samples"][:args.samples]:
        print(f"  {question}  ->  {answer}")
    if old:
        print("\nold way, first 5 kept:")
        for question, answer in old["samples"][:5]:
            print(f"  {question}  ->  {answer}")


if __name__ == "__main__":
    asyncio.run(main())
