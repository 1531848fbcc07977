"""Training questions written by a model about each chunk, kept only when they are worth learning from.

A small model follows worked examples better than instructions, and copies a span from one sentence
better than from a whole chunk of documentation. So the base model is shown a few-shot chat (three
made-up sentences, each with an answer copied from it and then a question that the answer answers)
and then asked about one prose sentence of the chunk at a time, in order, until one gives a good
pair (up to `FOCUS_SENTENCES` of them; the whole chunk when it has none). Several candidates are
sampled per request (the OpenAI `n` parameter) and each is checked: its answer must be a span of
the chunk, at word boundaries (as always), and the question must look like one about the chunk
(see `question_problem`); the best one is kept. A teacher (any OpenAI-compatible endpoint,
service/teacher.py) reads the whole chunk, writes several questions, and every good one is kept.
Requests run a few at a time.
"""

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from service.sentences import sentences
from service.training_data import QA, SourceChunk, fold, template_questions

# (sentence, question, answer): documentation-like, none from a real corpus.
WORKED_EXAMPLES = (
    ("The --depth option creates a shallow clone with a history truncated to the given number of commits.",
     "What does the --depth option create?", "a shallow clone"),
    ("Each backup is kept for 30 days, then it is deleted by the cleanup task.",
     "How long is each backup kept?", "30 days"),
    ("If the configuration file is missing, the scheduler uses the built-in defaults.",
     "What does the scheduler use if the configuration file is missing?", "the built-in defaults"),
)
# Prose sentences of a chunk asked about, one request each, in order until one gives a good pair:
# on git-doc, asking about the first two kept 32 % of chunks; most chunks that give nothing for one
# sentence give something for a later one.
FOCUS_SENTENCES = 4
ASK = ("Passage:\n{chunk}\n\nCopy a short answer word for word from this passage, then write the question "
       "that it answers.")
TEACHER_ASK = ("Passage:\n{chunk}\n\nWrite {k} different questions that this passage answers, each followed by "
               "its short answer copied word for word from the passage. Use exactly this format for each:\n"
               "Q: <question>\nA: <answer>")
QUESTION_TOKENS = 64  # room for "Q: … A: …"
TEACHER_TOKENS = 400
TEMPERATURE = 0.7
TEACHER_QUESTIONS = 3  # asked of a teacher per chunk; every good one is kept

_QA = re.compile(r"Q:\s*(?P<q>[^\n]+?)\s*\n+\s*A:\s*(?P<a>[^\n]+)", re.IGNORECASE)
_AQ = re.compile(r"A:\s*(?P<a>[^\n]+?)\s*\n+\s*Q:\s*(?P<q>[^\n]+)", re.IGNORECASE)
_STOP = frozenset("""what which when where does with that this from have there their about into used using than
then they them will would should could also only other some such more most each your does make made""".split())
_STARTS = frozenset("""what which who whom whose when where why how is are was were do does did can could
should would will may must has have had""".split())
MIN_WORDS, MAX_WORDS = 4, 30  # a question's words
MAX_ANSWER_WORDS = 20
COPY_WORDS = 8  # a question whose words after the first are a run of this many chunk words copies it


def messages_for(passage: str) -> list[dict]:
    """The few-shot chat: each worked example as a user turn and the assistant's answer ("A: …"
    then "Q: …"), then the passage."""
    messages = []
    for sentence, question, answer in WORKED_EXAMPLES:
        messages.append({"role": "user", "content": ASK.format(chunk=sentence)})
        messages.append({"role": "assistant", "content": f"A: {answer}\nQ: {question}"})
    messages.append({"role": "user", "content": ASK.format(chunk=passage)})
    return messages


def focus_passages(text: str, k: int = FOCUS_SENTENCES) -> list[str]:
    """Up to `k` prose sentences of the chunk (8 to 40 words, most of them words, not code), in
    order; the whole chunk when it has none."""
    prose = [s for s in sentences(text)
             if 8 <= len(s.split()) <= 40 and sum(w.isalpha() for w in s.split()) >= 0.6 * len(s.split())]
    return prose[:k] or [text]


def sampling_payload(model: str, messages: list[dict], n: int) -> dict:
    """The chat completion request that samples `n` candidates from the base model (greedy for one)."""
    return {"model": model, "messages": messages, "n": n, "max_tokens": QUESTION_TOKENS,
            "temperature": TEMPERATURE if n > 1 else 0}


def teacher_messages(chunk: str, k: int = TEACHER_QUESTIONS) -> list[dict]:
    return [{"role": "user", "content": TEACHER_ASK.format(chunk=chunk, k=k)}]


def parse_pairs(output: str) -> list[tuple[str, str]]:
    """Every "A: … Q: …" (or "Q: … A: …") pair of a model's output, the answer stripped of quotes
    and a final period."""
    q_at, a_at = re.search(r"Q:", output, re.IGNORECASE), re.search(r"A:", output, re.IGNORECASE)
    if q_at is None or a_at is None:
        return []
    pattern = _QA if q_at.start() < a_at.start() else _AQ  # the order the output uses
    return [(m["q"].strip(), m["a"].strip().strip('"').strip("`").rstrip(".").strip())
            for m in pattern.finditer(output)]


def _words(text: str) -> list[str]:
    return re.findall(r"[\w$<>./-]+", text.lower())


def is_span(answer: str, chunk: str) -> bool:
    """`answer` occurs in `chunk` (case and whitespace aside) starting and ending at word boundaries."""
    return re.search(rf"(?<!\w){re.escape(fold(answer))}(?!\w)", fold(chunk)) is not None


def question_problem(question: str, answer: str, chunk: str) -> str | None:
    """Why the pair is not worth learning from, or None. Checked in order: the answer is a span
    of the chunk at word boundaries; it says something (a word of 3 letters or more, or a number;
    not yes or no); the question ends with "?", starts with a wh-word or an auxiliary and has 4
    to 30 words; the answer is short (at most 20 words) and not in the question; the question is
    about the chunk (two of its words of 4 letters or more occur in it, other than common ones)
    and is not a sentence of the chunk copied with a question word in front."""
    norm_answer = fold(answer)
    if len(norm_answer) < 2 or not is_span(answer, chunk):
        return "answer not in the chunk"
    if norm_answer in ("yes", "no") or not re.search(r"[^\W\d_]{3}|\d", norm_answer):
        return "answer says nothing"
    if not question.endswith("?") or question.count("?") > 1:
        return "not a question"
    words = question.split()
    if words[0].lower().strip("\"'") not in _STARTS:
        return "does not start with a question word"
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return "too short or too long"
    if len(answer.split()) > MAX_ANSWER_WORDS:
        return "answer too long"
    if norm_answer in fold(question):
        return "answer in the question"
    chunk_words = set(_words(chunk))
    shared = {w for w in _words(question) if len(w) >= 4 and w not in _STOP and w in chunk_words}
    if len(shared) < 2:
        return "not about the chunk"
    body = _words(question)[1:]
    run = " " + " ".join(_words(chunk)) + " "
    if len(body) >= COPY_WORDS and any(" " + " ".join(body[i:i + COPY_WORDS]) + " " in run
                                       for i in range(len(body) - COPY_WORDS + 1)):
        return "copies the chunk"
    return None


def _rank(qa: tuple[str, str]) -> tuple:
    """Among good candidates: a short answer (2 to 6 words best), then a question of middling length."""
    question, answer = qa
    answer_words = len(answer.split())
    return (abs(answer_words - 3) if answer_words > 1 else 3, abs(len(question.split()) - 10))


def good_pairs(outputs: list[str], chunk: SourceChunk, origin: str, keep: int) -> list[QA]:
    """The best `keep` good pairs among the outputs' candidates, one per distinct question."""
    good = sorted(((q, a) for output in outputs for q, a in parse_pairs(output)
                   if question_problem(q, a, chunk.text) is None), key=_rank)
    seen, kept = set(), []
    for question, answer in good:
        if fold(question) not in seen:
            seen.add(fold(question))
            kept.append(QA(question, answer, chunk, origin))
    return kept[:keep]


# Writes: messages -> the sampled candidates' texts.
Writer = Callable[[list[dict], int], Awaitable[list[str]]]


@dataclass
class QuestionStats:
    """What question writing gave: per origin, the chunks that gave at least one kept question."""
    chunks: int = 0
    calls: int = 0  # requests to the question writer (each samples several candidates)
    kept_chunks: dict[str, int] = field(default_factory=dict)
    sample: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, pairs: list[QA]) -> None:
        for origin in {qa.origin for qa in pairs}:
            self.kept_chunks[origin] = self.kept_chunks.get(origin, 0) + 1

    def report(self) -> dict:
        share = {o: round(n / self.chunks, 3) if self.chunks else 0.0 for o, n in sorted(self.kept_chunks.items())}
        return {"chunks": self.chunks, "kept_share": share, "writer_calls": self.calls,
                "seconds": round(self.seconds, 1), "sample": self.sample}


@dataclass(frozen=True)
class QuestionWriter:
    """Questions about chunks from a model (`write`, None for templates only), `concurrency`
    requests in flight; `origin` names the model: "model" (the base engine) or "teacher"."""
    write: Writer | None
    origin: str = "model"
    candidates: int = 4  # sampled per chunk from the base model
    concurrency: int = 4
    keep: int = 1  # kept per chunk: the base model's best; a teacher's several

    async def questions(self, chunks: list[SourceChunk], max_examples: int,
                        progress: Callable[[int, int], None] | None = None,
                        sample_size: int = 5) -> tuple[list[QA], QuestionStats]:
        """Model-written questions and a template's per chunk, in chunk order; at most `max_examples`."""
        stats = QuestionStats(chunks=len(chunks))
        started = time.monotonic()
        gate = asyncio.Semaphore(self.concurrency)
        done = 0

        async def one(chunk: SourceChunk) -> list[QA]:
            nonlocal done
            made: list[QA] = []
            if self.write is not None:
                made = await self._ask(chunk, gate, stats)
            made += (await asyncio.to_thread(template_questions, chunk))[:1]
            done += 1
            if progress is not None:
                progress(done, len(chunks))
            return made

        per_chunk = await asyncio.gather(*(one(c) for c in chunks))
        pairs: list[QA] = []
        for made in per_chunk:
            stats.count(made)
            pairs += made
        stats.seconds = time.monotonic() - started
        stats.sample = [qa.question for qa in pairs if qa.origin != "template"][:sample_size] or \
            [qa.question for qa in pairs][:sample_size]
        return pairs[:max_examples], stats

    async def _ask(self, chunk: SourceChunk, gate: asyncio.Semaphore, stats: "QuestionStats") -> list[QA]:
        """The chunk's good pairs: a teacher's from one request; the base model's from one request per
        focus sentence, stopping at the first that gives a good pair."""
        if self.origin == "teacher":
            asks = [(teacher_messages(chunk.text), 1)]
        else:
            focus = await asyncio.to_thread(focus_passages, chunk.text)
            asks = [(messages_for(passage), self.candidates) for passage in focus]
        outputs: list[str] = []
        for messages, n in asks:
            async with gate:
                outputs += await self.write(messages, n)
                stats.calls += 1
            kept = good_pairs(outputs, chunk, self.origin, self.keep)
            if len(kept) >= self.keep:
                break
        return kept
