"""Training examples from a corpus, in exactly the prompt format the gateway sends.

Questions come from the corpus itself, nothing is fetched: the base model is asked for a question
whose answer it copies from the chunk (kept only when that answer really occurs in the chunk),
and extractive templates turn definition-like sentences ("X is Y") into questions. Recipes:
- `reader` (RAFT-style): the question with passages from graft's own retriever, the golden chunk
  among distractors (left out in a share of examples), built by the gateway's PromptBuilder and
  rendered with the model's chat template; the target answer cites the golden passage as [n].
- `memorize`: the chunk texts (continued pretraining) plus the questions asked closed-book.
"""

import hashlib
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from adapters_store.durable import write_bytes_durably
from adapters_store.models import Chunk, Corpus, Document
from service.rag.prompt import Passage, PromptBuilder
from service.rag.retrieval import Retriever

RECIPES = ("reader", "memorize")
# What a training request leaves out, per recipe, as measured by bench/train.py on bench/lore.py:
# reading passages is learned in a couple of passes; recalling facts closed-book takes many.
RECIPE_DEFAULTS = {"reader": {"epochs": 2, "learning_rate": 5e-4},
                   "memorize": {"epochs": 12, "learning_rate": 1e-3}}
GOLDEN_SHARE = 0.8  # RAFT's P: the rest of the reader examples see only distractors
PASSAGES = 4  # as the default domain retrieval's k
ANSWER_TOKENS = 64  # the completion budget the prompt is fitted for
QUESTION_PROMPT = ("Passage:\n{chunk}\n\nWrite one question that this passage answers, then the answer "
                   "copied word for word from the passage.\nFormat:\nQ: <question>\nA: <answer>")
_QA = re.compile(r"Q:\s*(?P<q>[^\n]+\?)\s*\n+\s*A:\s*(?P<a>[^\n]+)", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_DEFINITION = re.compile(r"^(?P<subject>[A-Z][\w' -]{2,60}?) (?P<verb>is|are|was|were) (?P<rest>[^.]{3,200})\.?$")


def fold(text: str) -> str:
    """Lowercased, whitespace runs made one space, ends stripped: what the span check forgives. Not
    the metrics' SQuAD normalisation, which drops punctuation and articles and so would take text
    that is not in the chunk (a target the model could not have copied) for a span of it."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class SourceChunk:
    chunk_id: int
    document_id: str
    text: str


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    chunk: SourceChunk
    origin: str  # "model" or "template"


def corpus_chunks(sessions, corpus_name: str, limit: int, seed: int) -> list[SourceChunk]:
    with sessions() as session:
        rows = session.execute(select(Chunk.id, Document.external_id, Chunk.text)
                               .join(Document, Chunk.document_id == Document.id)
                               .join(Corpus, Chunk.corpus_id == Corpus.id)
                               .where(Corpus.name == corpus_name).order_by(Chunk.id)).all()
    chunks = [SourceChunk(r.id, r.external_id, r.text) for r in rows]
    random.Random(seed).shuffle(chunks)
    return chunks[:limit]


def template_questions(chunk: SourceChunk) -> list[QA]:
    """Definitions and facts stated as "X is Y": "What is X?" answered by Y."""
    found = []
    for sentence in _SENTENCE.split(chunk.text.replace("\n", " ")):
        match = _DEFINITION.match(sentence.strip())
        if match:
            subject = match["subject"].strip()
            found.append(QA(f"What {match['verb']} {subject}?", match["rest"].strip(), chunk, "template"))
    return found


def parse_model_question(output: str, chunk: SourceChunk) -> QA | None:
    """The model's question, kept only when its answer is really a span of the chunk."""
    match = _QA.search(output)
    if match is None:
        return None
    answer = match["a"].strip().strip('"').rstrip(".")
    if len(answer) < 2 or fold(answer) not in fold(chunk.text):
        return None
    return QA(match["q"].strip(), answer, chunk, "model")


async def synthesize(chunks: list[SourceChunk], ask: Callable[[str], Awaitable[str]] | None,
                     max_examples: int) -> list[QA]:
    """Model-written questions first (when `ask` is given), then templates, one source chunk at a time."""
    pairs: list[QA] = []
    for chunk in chunks:
        if len(pairs) >= max_examples:
            break
        if ask is not None:
            made = parse_model_question(await ask(QUESTION_PROMPT.format(chunk=chunk.text)), chunk)
            if made is not None:
                pairs.append(made)
        pairs += template_questions(chunk)[:1]
    return pairs[:max_examples]


class ExampleBuilder:
    """Renders examples with the gateway's own prompt code: PromptBuilder + the chat template."""

    def __init__(self, prompts: PromptBuilder, retriever: Retriever, corpus: str, mode: str = "hybrid",
                 system_prompt: str | None = None, seed: int = 0):
        self.prompts = prompts
        self.retriever = retriever
        self.corpus = corpus
        self.mode = mode
        self.system_prompt = system_prompt
        self.random = random.Random(seed)

    def render(self, messages: list[dict]) -> str:
        return self.prompts.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def reader(self, qa: QA) -> dict:
        hits, _ = self.retriever.search([self.corpus], qa.question, PASSAGES, self.mode)
        passages = [Passage(h.corpus, h.document_id, h.chunk_id, h.score, h.text, h.metadata) for h in hits]
        found = any(p.chunk_id == qa.chunk.chunk_id for p in passages)
        source = "retrieved"  # the passages exactly as a completion for this question gets them
        if self.random.random() >= GOLDEN_SHARE:  # distractors only: answer without a passage to cite
            passages = [p for p in passages if p.chunk_id != qa.chunk.chunk_id]
            source = "distractors"
        elif not found:  # the retriever missed it: in at a random rank, as a retriever might have put it
            at = self.random.randrange(min(len(passages), PASSAGES - 1) + 1)
            passages.insert(at, Passage(self.corpus, qa.chunk.document_id, qa.chunk.chunk_id, 1.0, qa.chunk.text))
            passages = passages[:PASSAGES]
            source = "golden_inserted"
        messages, used = self.prompts.build_chat([{"role": "user", "content": qa.question}], passages,
                                                 self.system_prompt, ANSWER_TOKENS)
        cited = next((i + 1 for i, p in enumerate(used) if p.chunk_id == qa.chunk.chunk_id), None)
        completion = f"{qa.answer} [{cited}]." if cited else f"{qa.answer}."
        return {"prompt": self.render(messages), "completion": completion,
                "meta": {"question": qa.question, "answer": qa.answer, "document_id": qa.chunk.document_id,
                         "cited": cited, "passages": source, "origin": qa.origin}}

    def closed_book(self, qa: QA) -> dict:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": qa.question})
        return {"prompt": self.render(messages), "completion": f"{qa.answer}.",
                "meta": {"question": qa.question, "answer": qa.answer, "document_id": qa.chunk.document_id,
                         "origin": qa.origin}}


def build_examples(recipe: str, builder: ExampleBuilder, pairs: list[QA], chunks: list[SourceChunk]) -> list[dict]:
    if recipe == "reader":
        return [builder.reader(qa) for qa in pairs]
    return [{"text": c.text, "meta": {"document_id": c.document_id}} for c in chunks] + \
        [builder.closed_book(qa) for qa in pairs]


def write_examples(path: Path, examples: list[dict]) -> str:
    """Write the examples durably as JSONL; their sha256."""
    data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_durably(path, data)
    return hashlib.sha256(data).hexdigest()
