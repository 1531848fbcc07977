"""Every metric computed by hand on a few items (the expected values are worked out in comments)."""

import pytest

from evaluation.metrics import (
    METRICS,
    answer_contains,
    answer_f1,
    citation_precision,
    cited_document_ids,
    cited_numbers,
    exact_match,
    f1_tokens,
    hit_at_k,
    item_scores,
    mrr_at_k,
    normalize,
    recall_at_k,
    summarize,
)


def test_normalize_lowercases_and_collapses_whitespace():
    assert normalize("  Git  PUSH\n\t--Force ") == "git push --force"
    assert normalize("") == ""


# Retrieved chunks by document id, rank order. Duplicates: several chunks of one document.
RETRIEVED = ["intro", "branching", "branching", "merging", "remotes"]


def test_hit_at_k():
    assert hit_at_k(RETRIEVED, ["merging"], k=5) == 1.0   # merging is rank 4 <= 5
    assert hit_at_k(RETRIEVED, ["merging"], k=3) == 0.0   # top 3: intro, branching, branching
    assert hit_at_k(RETRIEVED, ["tags"], k=5) == 0.0      # never retrieved
    assert hit_at_k([], ["tags"], k=5) == 0.0


def test_mrr_at_k():
    # First relevant chunk at rank 2 -> 1/2 (the duplicate at rank 3 changes nothing).
    assert mrr_at_k(RETRIEVED, ["branching"], k=5) == 0.5
    # Relevant documents at ranks 4 and 5: the first one counts -> 1/4.
    assert mrr_at_k(RETRIEVED, ["remotes", "merging"], k=5) == 0.25
    # Rank 3 -> 1/3.
    assert mrr_at_k(["a", "b", "c"], ["c"], k=3) == pytest.approx(1 / 3)
    # Missing -> 0; present but beyond k -> 0.
    assert mrr_at_k(RETRIEVED, ["tags"], k=5) == 0.0
    assert mrr_at_k(RETRIEVED, ["remotes"], k=4) == 0.0


def test_recall_at_k():
    # Two relevant documents, one retrieved -> 1/2.
    assert recall_at_k(RETRIEVED, ["branching", "tags"], k=5) == 0.5
    # Two chunks of "branching" still make one document: relevant {branching, merging}, both in top 4.
    assert recall_at_k(RETRIEVED, ["branching", "merging"], k=4) == 1.0
    # Top 3 has branching twice but not merging -> 1/2, not 2/2.
    assert recall_at_k(RETRIEVED, ["branching", "merging"], k=3) == 0.5
    # A relevant id listed twice counts once.
    assert recall_at_k(RETRIEVED, ["branching", "branching", "tags"], k=5) == 0.5


def test_retrieval_metrics_are_none_without_document_ids():
    for metric in (hit_at_k, mrr_at_k, recall_at_k):
        assert metric(RETRIEVED, [], k=5) is None


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        hit_at_k(RETRIEVED, ["intro"], k=0)


def test_answer_contains_ignores_case_and_whitespace():
    output = "Use   git\nREBASE --onto to move it."
    assert answer_contains(output, ["git rebase --onto"]) == 1.0  # normalized: "git rebase --onto"
    assert answer_contains(output, ["cherry-pick", "Rebase  --ONTO"]) == 1.0  # the second one
    assert answer_contains(output, ["git merge"]) == 0.0
    assert answer_contains(output, []) is None
    assert answer_contains(output, ["  "]) is None  # a blank answer is not an answer


def test_exact_match():
    assert exact_match("  Git   Rebase ", ["git rebase"]) == 1.0
    assert exact_match("git rebase.", ["git rebase"]) == 0.0  # only case and whitespace are forgiven
    assert exact_match("git rebase", ["merge", "GIT REBASE"]) == 1.0
    assert exact_match("git rebase", []) is None


def test_f1_tokens_strip_punctuation_at_token_ends():
    assert f1_tokens("Run `git fetch`, then (HEAD).") == ["run", "git", "fetch", "then", "head"]
    assert f1_tokens("origin/main -- !") == ["origin/main"]  # inner punctuation stays; "--", "!" go
    assert f1_tokens("“C++”") == ["c++"]  # symbols are not punctuation


def test_answer_f1():
    # output tokens: [the, default, branch, is, main] (5); answer: [main, branch] (2)
    # common = 2 -> precision 2/5, recall 2/2 -> F1 = 2*0.4*1/(1.4) = 4/7
    assert answer_f1("The default  BRANCH is main.", ["main branch"]) == pytest.approx(4 / 7)
    # best over answers: "master" -> 0; "the main" -> common {the, main} = 2, P 2/5, R 1 -> 4/7;
    # "default branch is main" -> common 4, P 4/5, R 1 -> 8/9
    assert answer_f1("The default branch is main", ["master", "the main", "default branch is main"]) \
        == pytest.approx(8 / 9)
    # duplicated tokens count by multiplicity: output [a, a, b], answer [a, b, b]: common a:1 b:1 = 2
    # P 2/3, R 2/3 -> 2/3
    assert answer_f1("a a b", ["A B b"]) == pytest.approx(2 / 3)
    assert answer_f1("nothing here", ["main"]) == 0.0
    assert answer_f1("", ["main"]) == 0.0
    assert answer_f1("Main!", ["main"]) == 1.0
    assert answer_f1("main", []) is None


def test_citation_precision():
    # distinct cited {branching, intro}: branching relevant -> 1/2
    assert citation_precision(["branching", "intro", "branching"], ["branching", "merging"]) == 0.5
    assert citation_precision(["branching"], ["branching"]) == 1.0
    assert citation_precision(["intro"], ["branching"]) == 0.0
    assert citation_precision([], ["branching"]) is None  # nothing cited
    assert citation_precision(["branching"], []) is None  # nothing relevant known


@pytest.mark.parametrize("output, numbers", [
    ("Use git rebase [1].", [1]),
    ("See [2, 3] and [1].", [2, 3, 1]),
    ("Both [1][3], again [3] and [ 1 ,2 ].", [1, 3, 2]),
    ("No citation here, a list [a] or [] or [1.5].", []),
    ("[0] is not a passage; [12] is.", [12]),
])
def test_cited_numbers(output, numbers):
    assert cited_numbers(output) == numbers


def test_cited_document_ids_maps_numbers_to_passages():
    passages = ["intro", "branching", "intro"]  # passage [1] and [3] come from one document
    assert cited_document_ids("[3] and [2][1], also [7]", passages) == ["intro", "branching"]
    assert cited_document_ids("no markers", passages) == []


def test_item_scores_keys_and_values():
    scores = item_scores(retrieved=RETRIEVED, relevant=["branching", "tags"], k=5,
                         output="Create it with git branch [2][1].", answers=["git branch"],
                         cited=["branching", "intro"])
    assert tuple(scores) == METRICS
    assert scores == {
        "hit_at_k": 1.0,            # branching at rank 2
        "mrr_at_k": 0.5,            # 1/2
        "recall_at_k": 0.5,         # branching yes, tags no
        "answer_contains": 1.0,
        # tokens [create, it, with, git, branch, 2][1]] -> "[2][1]" strips to "2][1": 6 tokens,
        # common {git, branch} = 2: P 2/6, R 2/2 -> 2*(1/3)/(4/3) = 1/2
        "answer_f1": pytest.approx(0.5),
        "exact_match": 0.0,
        "citation_precision": 0.5,  # {branching, intro}: one relevant
    }


def test_item_scores_without_labels_are_all_none():
    scores = item_scores(retrieved=RETRIEVED, relevant=[], k=5, output="x", answers=[], cited=["intro"])
    assert scores == dict.fromkeys(METRICS)


def test_summarize_means_skip_none_and_percentiles():
    items = [
        {**dict.fromkeys(METRICS), "hit_at_k": 1.0, "mrr_at_k": 0.5, "answer_f1": 0.2},
        {**dict.fromkeys(METRICS), "hit_at_k": 0.0, "mrr_at_k": 0.0},
        {**dict.fromkeys(METRICS), "hit_at_k": 1.0, "mrr_at_k": 1.0},
    ]
    latencies = [10.0, 20.0, 30.0, 40.0, 1000.0]
    summary = summarize(items, latencies, [5, 7, 9])
    assert summary["hit_at_k"] == pytest.approx(2 / 3)   # (1 + 0 + 1) / 3
    assert summary["mrr_at_k"] == pytest.approx(0.5)     # (0.5 + 0 + 1) / 3
    assert summary["answer_f1"] == pytest.approx(0.2)    # only the first item has it
    assert summary["recall_at_k"] is None                # no item has it
    # linear percentiles on 5 sorted values: p50 -> position 0.5*4 = 2 -> 30;
    # p99 -> position 0.99*4 = 3.96 -> 40 + 0.96*(1000-40) = 961.6
    assert summary["latency_p50_ms"] == 30.0
    assert summary["latency_p99_ms"] == pytest.approx(961.6)
    assert summary["completion_tokens"] == 21
    assert summary["items"] == 3
    assert set(summary) == {*METRICS, "latency_p50_ms", "latency_p99_ms", "completion_tokens", "items"}


def test_summarize_empty_run():
    summary = summarize([], [], [])
    assert all(summary[m] is None for m in METRICS)
    assert summary["latency_p50_ms"] is None and summary["latency_p99_ms"] is None
    assert summary["completion_tokens"] == 0 and summary["items"] == 0


def test_without_retrieval_the_retrieval_metrics_are_none():
    scores = item_scores(retrieved=[], relevant=["a"], k=0, output="x", answers=["x"], cited=[])
    assert (scores["hit_at_k"], scores["mrr_at_k"], scores["recall_at_k"]) == (None, None, None)
    assert scores["exact_match"] == 1.0
