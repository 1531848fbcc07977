"""Training examples from a corpus, in exactly the prompt format the gateway sends.

Questions come from the corpus itself: a model writes them about each chunk (service/questions.py),
and extractive templates turn definitions ("X is a Y") into questions, only where the subject is
a noun phrase ("What is the index?", never "What is If this value?"). Recipes:
- `reader` (RAFT-style): the question with passages from graft's own retriever, the golden chunk
  among distractors (left out in a share of examples), built by the gateway's PromptBuilder and
  rendered with the model's chat template; the target quotes the sentence that holds the answer
  with its passage number, then answers citing it. Where the passages do not hold the answer the
  target is the abstention phrase.
- `memorize`: the chunk texts (continued pretraining) plus the questions asked closed-book.
"""

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from adapters_store.durable import write_bytes_durably
from adapters_store.models import Chunk, Corpus, Document
from evaluation.metrics import ABSTENTION_PHRASE
from service.rag.prompt import Passage, PromptBuilder
from service.rag.retrieval import Retriever
from service.sentences import sentences, supporting_sentence

RECIPES = ("reader", "memorize")
# What a training request leaves out, per recipe, as measured by bench/train.py on bench/lore.py:
# reading passages is learned in a couple of passes; recalling facts closed-book takes many.
RECIPE_DEFAULTS = {"reader": {"epochs": 2, "learning_rate": 5e-4},
                   "memorize": {"epochs": 12, "learning_rate": 1e-3}}
GOLDEN_SHARE = 0.85  # RAFT's P: the rest of the reader examples see only distractors (and abstain)
PASSAGES = 4  # as the default domain retrieval's k
ANSWER_TOKENS = 64  # the completion budget the prompt is fitted for
QUOTE_WORDS = 30  # a longer supporting sentence is quoted around the answer

_DEFINITION = re.compile(r"^(?P<subject>[^,;:()\"]{2,60}?) (?P<verb>is|are|was|were) "
                         r"(?P<rest>(?:a|an|the|one) [^;]{3,200}?)\.?$")
_DETERMINERS = frozenset(("the", "a", "an"))
# Words that never start a definition's subject: subordinators, pronouns, demonstratives,
# quantifiers, conjunctions, prepositions and sentence adverbs ("If this value is …",
# "It is …", "There is …", "Each of them is …", "In this mode the default is …").
_NOT_FIRST = frozenset("""if when whenever while although though because since unless until once after before
as where wherever whether so than that this these those there here which what who whom whose why how
it its they them their he she his her we our you your i me my one ones some any each every all both either
neither no none nothing another other others such many much most more few several also however thus then
therefore otherwise instead only not and but or nor yet for in on at by from with without into onto of to
about above below under over between through during per via note see default often usually typically normally
generally sometimes always never now still even just""".split())
# Words that cannot be inside a noun-phrase subject: pronouns, verbs and subordinators.
_NOT_INSIDE = _NOT_FIRST - {"one", "of", "for", "in", "on", "to", "by", "with", "from", "default", "more", "other",
                            "each", "all", "no", "only"} | frozenset("""is are was were be been being has have had
do does did can could will would shall should may might must not""".split())
# Words a noun phrase does not end with.
_NOT_LAST = frozenset("the a an of to in on at by for from with and or but that which this".split())
_WORD = re.compile(r"^[A-Za-z$-][\w'./$-]*$")
_NAME_WORD = re.compile(r"^[A-Z][a-z0-9]*(?:[-'][A-Za-z0-9]+)*$|^[A-Z0-9_]{2,}$")  # Fog, Quenmoor, HEAD, GIT_DIR
_CODE_WORD = re.compile(r"^(?:--?|\$)?[a-z0-9][\w.-]*$")  # --depth, git-log, $MERGED, core.pager
_VAGUE_ANSWER = re.compile(r"^(?:the same\b|the default\.?$|one of\b)", re.IGNORECASE)


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
    origin: str  # "model" (the base engine), "teacher" or "template"


def corpus_chunks(sessions, corpus_name: str, limit: int, seed: int) -> list[SourceChunk]:
    with sessions() as session:
        rows = session.execute(select(Chunk.id, Document.external_id, Chunk.text)
                               .join(Document, Chunk.document_id == Document.id)
                               .join(Corpus, Chunk.corpus_id == Corpus.id)
                               .where(Corpus.name == corpus_name).order_by(Chunk.id)).all()
    chunks = [SourceChunk(r.id, r.external_id, r.text) for r in rows]
    random.Random(seed).shuffle(chunks)
    return chunks[:limit]


def definition_subject(subject: str) -> str | None:
    """The subject as a question names it ("The index" -> "the index"), or None when it is not a
    noun phrase. A noun phrase here is 1 to 5 words, each with a letter; it does not open with a
    subordinator, pronoun, demonstrative, quantifier, conjunction, preposition or adverb, holds no
    pronoun or verb, and does not end on a function word. It is either a determiner (the, a, an)
    and at least one more word, or a name (every word capitalized: "Fog Guild", "HEAD") or one
    code-like word ("--depth", "git-log", "$MERGED"); a capitalized -ing word starts a clause, not
    a name ("Supplying --prune-tags")."""
    words = subject.split()
    if not 1 <= len(words) <= 5 or not all(_WORD.match(w) and any(c.isalpha() for c in w) for w in words):
        return None
    lower = [w.lower() for w in words]
    if lower[0] in _NOT_FIRST or lower[-1] in _NOT_LAST or any(w in _NOT_INSIDE for w in lower[1:]):
        return None
    if lower[0] in _DETERMINERS:
        rest = lower[1:]
        if not rest or any(w in _DETERMINERS for w in rest):
            return None
        return " ".join([lower[0], *words[1:]])
    if any(w in _DETERMINERS for w in lower) or lower[0].endswith("ing"):
        return None
    code_like = len(words) == 1 and _CODE_WORD.match(words[0]) and any(not c.isalpha() for c in words[0])
    if all(_NAME_WORD.match(w) for w in words) or code_like:
        return subject
    return None


def template_questions(chunk: SourceChunk) -> list[QA]:
    """Definitions stated as "X is a/an/the Y" with a noun-phrase X: "What is X?" answered by Y."""
    found = []
    for sentence in sentences(chunk.text):
        match = _DEFINITION.match(sentence)
        subject = definition_subject(match["subject"].strip()) if match else None
        answer = match["rest"].strip().rstrip(":.,") if match else ""
        if subject is not None and not _VAGUE_ANSWER.match(answer):
            found.append(QA(f"What {match['verb']} {subject}?", answer, chunk, "template"))
    return found


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
        if self.random.random() >= GOLDEN_SHARE:  # distractors only: nothing to quote, so abstain
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
        if cited is None:  # a distractor may hold the answer too (the same fact on another page)
            cited = next((i + 1 for i, p in enumerate(used) if fold(qa.answer) in fold(p.text)), None)
        completion = reader_target(qa.answer, used[cited - 1].text if cited else None, cited)
        return {"prompt": self.render(messages), "completion": completion,
                "meta": {"question": qa.question, "answer": qa.answer, "document_id": qa.chunk.document_id,
                         "cited": cited, "passages": source, "origin": qa.origin}}

    def closed_book(self, qa: QA) -> dict:
        """The question as a completion without retrieval gets it: the same builder, no passages."""
        messages, _ = self.prompts.build_chat([{"role": "user", "content": qa.question}], [], self.system_prompt,
                                              ANSWER_TOKENS)
        return {"prompt": self.render(messages), "completion": f"{qa.answer}.",
                "meta": {"question": qa.question, "answer": qa.answer, "document_id": qa.chunk.document_id,
                         "origin": qa.origin}}


def reader_target(answer: str, passage: str | None, cited: int | None) -> str:
    """Quote, then answer: `"<the sentence of passage [n] that holds the answer>" [n]` and
    `Answer: <answer> [n].` on the next line; the abstention phrase when no passage holds it."""
    if passage is None or cited is None:
        return ABSTENTION_PHRASE
    quote = supporting_sentence(passage, answer, QUOTE_WORDS)
    return f'"{quote}" [{cited}]\nAnswer: {answer} [{cited}].'


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
