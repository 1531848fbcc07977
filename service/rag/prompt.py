"""Build the engine prompt from a request and retrieved passages, within the context budget.

Passages are numbered [1], [2], ... in rank order and the list returned with the prompt is
exactly the ones the model saw (the citations). Budget rule: prompt tokens + max_tokens <=
max_model_len. Lowest-ranked passages are dropped first. If not even the top passage fits
whole, it is cut (at a word boundary, marked with "…") rather than dropped, provided at least
MIN_TRUNCATED_TOKENS of it fit; the returned Passage is still the original (full) chunk. The
client's messages / prompt are never cut: if they do not fit on their own, ContextTooLong.
"""

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from indexer.fast_tokenizer import private_copy

INSTRUCTION = ("Answer the question using the numbered passages below. Cite them as [n]. "
               "If they do not contain the answer, say so.")


@dataclass(frozen=True)
class Template:
    """How the passages meet the question: the instruction put before them, and where they go
    (`system`: in the system turn, before the conversation; `after_question`: in the last user turn,
    after the question)."""
    instruction: str
    placement: str = "system"


# The library a domain configuration picks from (by name); `numbered` is the default.
TEMPLATES: dict[str, Template] = {
    "numbered": Template(INSTRUCTION),
    "quote_then_answer": Template(
        "First quote the one sentence of the numbered passages below that supports the answer, with its "
        "[n]; then answer the question in a few words. If no passage contains the answer, say so."),
    "answer_then_cite": Template(
        "Answer the question in a few words, then name the numbered passages below that support the "
        "answer as [n]. If they do not contain the answer, say so."),
    "passages_after_question": Template(
        "Answer the question above using the numbered passages below. Cite them as [n]. "
        "If they do not contain the answer, say so.", placement="after_question"),
}
DEFAULT_TEMPLATE = "numbered"
# A shorter fragment of the top passage is more noise than help: drop it instead.
MIN_TRUNCATED_TOKENS = 32
ELLIPSIS = " …"
ELLIPSIS_TOKENS = 3  # room kept for ELLIPSIS and a word re-encoded differently after the cut
TOKENIZE_BATCH = 8
JOIN_SLACK_BASE, JOIN_SLACK_PER_LINE = 4, 2
LINE_PART_TOKENS_CACHE = 16384  # line prefixes and passage texts whose token counts are kept (a few MB)


@dataclass
class Passage:
    corpus: str
    document_id: str
    chunk_id: int
    score: float
    text: str
    metadata: dict = field(default_factory=dict)


class ContextTooLong(Exception):
    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int):
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        super().__init__(
            f"the request needs {prompt_tokens} prompt tokens (without any retrieved passage) "
            f"+ {max_tokens} max_tokens = {prompt_tokens + max_tokens}, more than this model's "
            f"context length of {max_model_len} tokens (prompt budget "
            f"{max(max_model_len - max_tokens, 0)}); shorten the input or lower max_tokens")


class PromptBuilder:
    def __init__(self, tokenizer: Any, max_model_len: int, default_max_tokens: int = 256):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.default_max_tokens = default_max_tokens
        # Corpus text must not be able to close the system turn (e.g. a document containing
        # "<|im_end|>"): special-token strings are removed from passages.
        specials = sorted(set(getattr(tokenizer, "all_special_tokens", [])), key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, specials))) if specials else None
        try:  # tokenizes without the transformers wrapper around it (per-call overhead)
            self._core = private_copy(tokenizer)
        except TypeError:  # a slow tokenizer: through transformers
            self._core = None
        self._part_tokens: LRUCache[str, int] = LRUCache(LINE_PART_TOKENS_CACHE)
        self._part_tokens_lock = threading.Lock()

    def build_chat(self, messages: list[dict], passages: list[Passage], system_prompt: str | None,
                   max_tokens: int | None, template: str = DEFAULT_TEMPLATE,
                   demonstrations: Sequence[dict] = ()) -> tuple[list[dict], list[Passage]]:
        """`template`: a name of TEMPLATES; `demonstrations`: [{question, answer}] shown as earlier
        turns of the conversation (few-shot), after the system turn."""
        shape = TEMPLATES[template]
        shots = [turn for d in demonstrations for turn in (
            {"role": "user", "content": d["question"]}, {"role": "assistant", "content": d["answer"]})]

        def render(lines: list[str] | None) -> list[dict]:
            out = [dict(m) for m in messages]  # never mutate the client's dicts
            block = None if lines is None else _retrieval_block(lines, shape.instruction)
            in_system = block if shape.placement == "system" else None
            if block is not None and shape.placement == "after_question":
                last = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
                if last is None:
                    in_system = block
                else:
                    out[last]["content"] = f"{_text_of(out[last].get('content'))}\n\n{block}"
            first = 0
            if out and out[0].get("role") == "system":
                parts = [system_prompt, _text_of(out[0].get("content")), in_system]
                out[0]["content"] = "\n\n".join(p for p in parts if p)
                first = 1
            elif system_prompt or in_system:
                content = "\n\n".join(p for p in (system_prompt, in_system) if p)
                out.insert(0, {"role": "system", "content": content})
                first = 1
            return out[:first] + shots + out[first:]

        return self._fit(render, self.count_chat_tokens, passages, max_tokens)

    def build_completion(self, prompt: str, passages: list[Passage], system_prompt: str | None,
                         max_tokens: int | None, template: str = DEFAULT_TEMPLATE,
                         demonstrations: Sequence[dict] = ()) -> tuple[str, list[Passage]]:
        shape = TEMPLATES[template]
        shots = "".join(f"Question: {d['question']}\nAnswer: {d['answer']}\n\n" for d in demonstrations)

        def render(lines: list[str] | None) -> str:
            if lines is None:
                body = prompt
            elif shape.placement == "after_question":
                body = f"Question: {prompt}\n\n{_retrieval_block(lines, shape.instruction)}\n\nAnswer:"
            else:
                body = f"{_retrieval_block(lines, shape.instruction)}\n\nQuestion: {prompt}\nAnswer:"
            body = shots + body
            return f"{system_prompt}\n\n{body}" if system_prompt else body

        # add_special_tokens: what vLLM's /v1/completions does with a text prompt.
        return self._fit(render, lambda text: len(self._token_ids([text], add_special_tokens=True)[0]),
                         passages, max_tokens)

    def count_chat_tokens(self, messages: list[dict]) -> int:
        # Flatten OpenAI content parts as vLLM does for string-content templates.
        flat = [{**m, "content": _text_of(m.get("content"))} for m in messages]
        text = self.tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=False)
        # The template writes the special tokens itself: none are added (as apply_chat_template's
        # own tokenize=True does).
        return len(self._token_ids([text])[0])

    def _token_ids(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        if self._core is not None:
            return [e.ids for e in self._core.encode_batch(texts, add_special_tokens=add_special_tokens)]
        return self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]

    def _fit(self, render: Callable[[list[str] | None], Any], count: Callable[[Any], int],
             passages: list[Passage], max_tokens: int | None) -> tuple[Any, list[Passage]]:
        max_tokens = self.default_max_tokens if max_tokens is None else max_tokens
        budget = self.max_model_len - max_tokens
        if passages:
            room = budget - count(render([]))  # what is left for the passage lines themselves
            lines = [_line(i + 1, p, self._specials) for i, p in enumerate(passages)]
            fitting = self._surely_fitting(passages, room)
            if fitting:
                return render(lines[:fitting]), passages[:fitting]
            # Exact path. Each line is tokenized once, in small batches, and only until the room is full.
            ids: list[list[int]] = []
            costs: list[int] = []  # tokens of each line, +1 for the newline joining them
            k, used = 0, 0
            while k < len(lines):
                if k == len(ids):
                    batch = lines[k:k + TOKENIZE_BATCH]
                    ids += self._token_ids(batch)
                    costs += [len(x) + 1 for x in ids[k:]]
                if used + costs[k] > room:
                    break
                used += costs[k]
                k += 1
            keep_top = len(ids[0])  # tokens of the top passage's line kept
            if k == 0 and room - 1 - ELLIPSIS_TOKENS >= MIN_TRUNCATED_TOKENS:
                keep_top, k = room - 1 - ELLIPSIS_TOKENS, 1
                lines[0] = self._truncate(ids[0], keep_top)
            # Counting lines separately is close but not exact (merges at the joins, template
            # quirks): check the real prompt once and trim by the overshoot if needed.
            while k:
                built = render(lines[:k])
                over = count(built) - budget
                if over <= 0:
                    return built, passages[:k]
                if k == 1:
                    keep_top = min(keep_top, len(ids[0])) - over - ELLIPSIS_TOKENS
                    if keep_top < MIN_TRUNCATED_TOKENS:
                        break
                    lines[0] = self._truncate(ids[0], keep_top)
                    continue
                while over > 0 and k > 1:
                    k -= 1
                    over -= costs[k]
        built = render(None)
        needed = count(built)
        if needed > budget:
            raise ContextTooLong(needed, max_tokens, self.max_model_len)
        return built, []

    def _surely_fitting(self, passages: list[Passage], room: int) -> int:
        """How many top passages fit in `room` tokens, chosen as the exact path would, when the
        estimate is safely under `room` even if the joins cost extra; 0 to let the exact path
        decide (near the budget, or the top passage must be cut)."""
        used = 0
        for start in range(0, len(passages), TOKENIZE_BATCH):
            batch = passages[start:start + TOKENIZE_BATCH]
            for k, cost in enumerate(self._line_costs(batch, start + 1), start):
                if used + cost > room:
                    return k if used + _join_slack(k) <= room else 0
                used += cost
        k = len(passages)
        return k if used + _join_slack(k) <= room else 0

    def _line_costs(self, passages: list[Passage], first_number: int) -> list[int]:
        """Tokens of each passage's line, +1 for the newline after it, counted as prefix + body.
        Both parts' counts are cached by text: retrieved chunks (and their numbered prefixes)
        recur, and tokenizing them is most of the time spent building a prompt."""
        prefixes = [_line_prefix(first_number + i, p) for i, p in enumerate(passages)]
        bodies = [_line_body(p, self._specials) for p in passages]
        with self._part_tokens_lock:
            counts = {part: self._part_tokens.get(part) for part in prefixes + bodies}
        missing = [part for part, n in counts.items() if n is None]
        if missing:
            fresh = {part: len(ids) for part, ids in
                     zip(missing, self._token_ids(missing))}
            with self._part_tokens_lock:
                self._part_tokens.update(fresh)
            counts.update(fresh)
        return [counts[prefix] + counts[body] + 1 for prefix, body in zip(prefixes, bodies)]

    def _truncate(self, ids: list[int], keep: int) -> str:
        text = self.tokenizer.decode(ids[:keep]).rstrip("\ufffd")  # a cut mid-character
        # Cut back to a word boundary unless that loses most of the fragment (e.g. CJK text).
        cut = text.rstrip().rfind(" ")
        if cut > len(text) // 2:
            text = text[:cut]
        return text.rstrip() + ELLIPSIS


def _join_slack(lines: int) -> int:
    """Most tokens the joined prompt may have beyond its separately counted parts, where text
    tokenized apart meets. 0 on the bundled SmolLM2 tokenizer over 2,000 random joins (see
    tests/service/rag); the margin is for tokenizers that merge across a newline."""
    return JOIN_SLACK_BASE + JOIN_SLACK_PER_LINE * lines


def _line(number: int, passage: Passage, specials: re.Pattern | None) -> str:
    return _line_prefix(number, passage) + _line_body(passage, specials)


def _line_prefix(number: int, passage: Passage) -> str:
    return f"[{number}] (document: {passage.document_id})"


def _line_body(passage: Passage, specials: re.Pattern | None) -> str:
    return " " + (specials.sub("", passage.text) if specials else passage.text)


def _retrieval_block(lines: list[str], instruction: str = INSTRUCTION) -> str:
    return f"{instruction}\n\n" + "\n".join(lines)


def _text_of(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""
