"""Per-item evaluation metrics and the summary of a run, with the evaluation issue's definitions.

Every metric is a float in [0, 1], or None when the item lacks what it needs (no `document_ids`
for the retrieval metrics and citation precision, no `answers` for the answer metrics); summaries
average over the items where it is not None.
"""

import re
import unicodedata
from collections import Counter

import numpy as np

METRICS = ("hit_at_k", "mrr_at_k", "recall_at_k", "answer_contains", "answer_f1", "exact_match",
           "citation_precision")
# What a reader says when the passages it was given do not hold the answer (the `reader` recipe
# teaches it; the `abstention` metric looks for it).
ABSTENTION_PHRASE = "The passages do not contain the answer."

# A citation marker as the gateway's prompt asks for them: [1], [2, 3] (several in a row, [1][3],
# are separate markers).
_CITATION = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")


def normalize(text: str) -> str:
    """Lowercase and collapse whitespace (runs become one space, ends stripped)."""
    return " ".join(text.lower().split())


# --- retrieval: `retrieved` holds the document id of each retrieved chunk, in rank order ---

def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def hit_at_k(retrieved: list[str], relevant: list[str], k: int) -> float | None:
    _check_k(k)
    if not relevant:
        return None
    wanted = set(relevant)
    return 1.0 if any(doc in wanted for doc in retrieved[:k]) else 0.0


def mrr_at_k(retrieved: list[str], relevant: list[str], k: int) -> float | None:
    _check_k(k)
    if not relevant:
        return None
    wanted = set(relevant)
    for rank, doc in enumerate(retrieved[:k], start=1):
        if doc in wanted:
            return 1.0 / rank
    return 0.0


def recall_at_k(retrieved: list[str], relevant: list[str], k: int) -> float | None:
    """Share of the distinct relevant documents that some top-k chunk belongs to."""
    _check_k(k)
    wanted = set(relevant)
    if not wanted:
        return None
    return len(wanted & set(retrieved[:k])) / len(wanted)


# --- answers ---

def _answers(answers: list[str]) -> list[str]:
    # A blank answer would be "contained" in every output: it is not an answer.
    return [a for a in map(normalize, answers) if a]


def _is_punctuation(char: str) -> bool:
    # Unicode punctuation, plus the backtick that wraps inline code in Markdown answers.
    return char == "`" or unicodedata.category(char).startswith("P")


def _strip_punctuation(token: str) -> str:
    start, end = 0, len(token)
    while start < end and _is_punctuation(token[start]):
        start += 1
    while end > start and _is_punctuation(token[end - 1]):
        end -= 1
    return token[start:end]


def f1_tokens(text: str) -> list[str]:
    """The tokens token F1 compares: the normalized text split on whitespace, with punctuation
    (Unicode category P, and the backtick) stripped from both ends of each token ("HEAD." and
    "head" match; "origin/main" and "c++" stay whole), and tokens that were only punctuation
    dropped. Contains and exact match do not strip punctuation."""
    return [t for t in map(_strip_punctuation, normalize(text).split()) if t]


def _token_f1(output_tokens: list[str], answer_tokens: list[str]) -> float:
    if not output_tokens or not answer_tokens:
        return 1.0 if output_tokens == answer_tokens else 0.0
    common = sum((Counter(output_tokens) & Counter(answer_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(output_tokens), common / len(answer_tokens)
    return 2 * precision * recall / (precision + recall)


def answer_contains(output: str, answers: list[str]) -> float | None:
    wanted = _answers(answers)
    if not wanted:
        return None
    text = normalize(output)
    return 1.0 if any(a in text for a in wanted) else 0.0


def answer_f1(output: str, answers: list[str]) -> float | None:
    """Token F1 against the best-matching answer (see `f1_tokens`)."""
    wanted = _answers(answers)
    if not wanted:
        return None
    tokens = f1_tokens(output)
    return max(_token_f1(tokens, f1_tokens(a)) for a in wanted)


def exact_match(output: str, answers: list[str]) -> float | None:
    wanted = _answers(answers)
    if not wanted:
        return None
    return 1.0 if normalize(output) in wanted else 0.0


# --- citations ---

def cited_numbers(output: str) -> list[int]:
    """Passage numbers cited with bracket markers ([1], [2, 3], [1][3]): distinct, in order of first
    appearance. Passages are numbered from 1, so [0] is not a citation; numbers past the last
    passage are the caller's to drop (see `cited_document_ids`)."""
    seen: dict[int, None] = {}
    for marker in _CITATION.finditer(output):
        for part in marker.group(1).split(","):
            n = int(part)
            if n >= 1:
                seen.setdefault(n, None)
    return list(seen)


def cited_document_ids(output: str, passage_document_ids: list[str]) -> list[str]:
    """Document ids of the passages the output cites; `passage_document_ids[i]` is the document of
    passage [i + 1] as numbered in the prompt. Distinct, in order of first citation."""
    seen: dict[str, None] = {}
    for n in cited_numbers(output):
        if n <= len(passage_document_ids):
            seen.setdefault(passage_document_ids[n - 1], None)
    return list(seen)


def citation_precision(cited: list[str], relevant: list[str]) -> float | None:
    """Share of the distinct cited documents that are relevant."""
    cited_docs, wanted = set(cited), set(relevant)
    if not cited_docs or not wanted:
        return None
    return len(cited_docs & wanted) / len(cited_docs)


# --- items and runs ---

def item_scores(*, retrieved: list[str], relevant: list[str], k: int, output: str,
                answers: list[str], cited: list[str]) -> dict[str, float | None]:
    """All of METRICS for one item; `cited` are the cited document ids. k = 0 means nothing was
    retrieved (retrieval off): the retrieval metrics cannot be computed."""
    searched = k >= 1
    return {
        "hit_at_k": hit_at_k(retrieved, relevant, k) if searched else None,
        "mrr_at_k": mrr_at_k(retrieved, relevant, k) if searched else None,
        "recall_at_k": recall_at_k(retrieved, relevant, k) if searched else None,
        "answer_contains": answer_contains(output, answers),
        "answer_f1": answer_f1(output, answers),
        "exact_match": exact_match(output, answers),
        "citation_precision": citation_precision(cited, relevant),
    }


def summarize(items_scores: list[dict], latencies_ms: list[float],
              completion_tokens: list[int]) -> dict:
    """Run summary: each metric's mean over the items that have it (None when none has it),
    latency p50/p99 (linear interpolation; None without latencies), total completion tokens."""
    summary: dict = {}
    for name in METRICS:
        values = [s[name] for s in items_scores if s.get(name) is not None]
        summary[name] = float(np.mean(values)) if values else None
    if latencies_ms:
        p50, p99 = np.percentile(np.asarray(latencies_ms, dtype=float), [50, 99], method="linear")
        summary["latency_p50_ms"], summary["latency_p99_ms"] = float(p50), float(p99)
    else:
        summary["latency_p50_ms"] = summary["latency_p99_ms"] = None
    summary["completion_tokens"] = int(sum(completion_tokens))
    summary["items"] = len(items_scores)
    return summary
