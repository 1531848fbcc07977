"""Per-item evaluation metrics and the summary of a run. docs/metrics.md defines each one with its
formula.

Every metric is a float in [0, 1], or None when it does not apply to the item: no `document_ids`
(the retrieval metrics, citation precision), no `answers` (the answer metrics), an unanswerable
item (the answer metrics) or an answerable one (`abstention`). Summaries average each metric over
the items where it is not None.

The answer metrics take the model's raw output: they drop its citation markers ([1], [2][3],
[1, 2]) and compare with SQuAD v1.1's normalisation (`normalize_answer`), so every caller scores
the same way.
"""

import re
import string
from collections import Counter

import numpy as np

METRICS = ("hit_at_k", "mrr_at_k", "recall_at_k", "answer_contains", "answer_f1", "exact_match",
           "citation_precision", "abstention")

# What an answer says when the passages do not hold the answer; an unanswerable item is scored by
# whether the output contains it (`abstention`); a training recipe that teaches abstaining
# uses this same constant.
ABSTENTION_PHRASE = "The passages do not contain the answer."

# A citation marker as the gateway's prompt asks for them: [1], [2, 3] (several in a row, [1][3],
# are separate markers).
_CITATION = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
_PUNCTUATION = frozenset(string.punctuation)  # ASCII punctuation, as SQuAD's script removes
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def strip_citations(text: str) -> str:
    """The text with every citation marker replaced by a space."""
    return _CITATION.sub(" ", text)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalisation after dropping citation markers: lowercase, remove ASCII
    punctuation, remove the articles a/an/the, collapse whitespace (ends stripped)."""
    text = strip_citations(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


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
    # An answer that normalises to nothing ("", "the", "?") would be "contained" in every output:
    # it is not an answer.
    return [a for a in map(normalize_answer, answers) if a]


def _token_f1(output_tokens: list[str], answer_tokens: list[str]) -> float:
    common = sum((Counter(output_tokens) & Counter(answer_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(output_tokens), common / len(answer_tokens)
    return 2 * precision * recall / (precision + recall)


def answer_contains(output: str, answers: list[str]) -> float | None:
    """1 when some normalised answer is a substring of the normalised output (not only whole
    tokens: SQuAD's normalisation glues "git-reset(1)" into "gitreset1", which contains "reset")."""
    wanted = _answers(answers)
    if not wanted:
        return None
    text = normalize_answer(output)
    return 1.0 if any(a in text for a in wanted) else 0.0


def answer_f1(output: str, answers: list[str]) -> float | None:
    """SQuAD token F1 against the best-matching answer: the normalised texts split on whitespace."""
    wanted = _answers(answers)
    if not wanted:
        return None
    tokens = normalize_answer(output).split()
    return max(_token_f1(tokens, a.split()) for a in wanted)


def exact_match(output: str, answers: list[str]) -> float | None:
    """1 when the normalised output equals some normalised answer."""
    wanted = _answers(answers)
    if not wanted:
        return None
    return 1.0 if normalize_answer(output) in wanted else 0.0


def abstention(output: str) -> float:
    """1 when the normalised output contains the normalised ABSTENTION_PHRASE, else 0."""
    return 1.0 if normalize_answer(ABSTENTION_PHRASE) in normalize_answer(output) else 0.0


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
                answers: list[str], cited: list[str], unanswerable: bool = False) -> dict[str, float | None]:
    """All of METRICS for one item; `output` is the model's raw output, `cited` the cited document
    ids. k = 0 means nothing was retrieved (retrieval off): the retrieval metrics cannot be computed.
    An unanswerable item is scored by `abstention` instead of the answer metrics."""
    searched = k >= 1
    return {
        "hit_at_k": hit_at_k(retrieved, relevant, k) if searched else None,
        "mrr_at_k": mrr_at_k(retrieved, relevant, k) if searched else None,
        "recall_at_k": recall_at_k(retrieved, relevant, k) if searched else None,
        "answer_contains": None if unanswerable else answer_contains(output, answers),
        "answer_f1": None if unanswerable else answer_f1(output, answers),
        "exact_match": None if unanswerable else exact_match(output, answers),
        "citation_precision": citation_precision(cited, relevant),
        "abstention": abstention(output) if unanswerable else None,
    }


def summarize(items_scores: list[dict], latencies_ms: list[float],
              completion_tokens: list[int]) -> dict:
    """Run summary: each metric's mean over the items it applies to, those whose scores hold it and
    not None (an item scored before a metric existed lacks the key); None when no item has it.
    Latency p50/p99 (linear interpolation; None without latencies), total completion tokens."""
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
