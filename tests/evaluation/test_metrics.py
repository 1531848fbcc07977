"""Every metric computed by hand on a few items (the expected values are worked out in comments,
never by calling the code under test). The answer metrics follow the official SQuAD v1.1 evaluation
script: its normalize_answer (lowercase, drop ASCII punctuation, drop the articles a/an/the,
collapse whitespace), exact match of normalised strings, token F1 of normalised tokens."""

import pytest

from evaluation.metrics import (
    ABSTENTION_PHRASE,
    METRICS,
    abstention,
    answer_contains,
    answer_f1,
    citation_precision,
    cited_document_ids,
    cited_numbers,
    exact_match,
    hit_at_k,
    item_scores,
    mrr_at_k,
    normalize_answer,
    recall_at_k,
    summarize,
)


@pytest.mark.parametrize("text, normalised", [
    ("The Cat!", "cat"),
    ("  Git  PUSH\n\t--Force ", "git push force"),
    # articles go only as whole words: "Theory" and "anthem" stay
    ("An apple, a pear and THE plum. Theory of an anthem", "apple pear and plum theory of anthem"),
    # punctuation inside a word is removed, not turned into a space (as SQuAD's script does)
    ("git-rebase origin/main c++", "gitrebase originmain c"),
    # citation markers go first, so their digits do not become tokens
    ("Use git rebase [1].", "use git rebase"),
    ("Both [2][3] and [1, 2], [ 4 ].", "both and"),
    ("not a marker: [b] [1.5]", "not marker b 15"),
    # only ASCII punctuation goes, as in SQuAD's script (string.punctuation)
    ("“Cat”", "“cat”"),
    ("", ""),
])
def test_normalize_answer_is_squads_after_dropping_citation_markers(text, normalised):
    assert normalize_answer(text) == normalised


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


def test_answer_contains_is_a_substring_of_the_normalised_output():
    output = "Use   git\nREBASE --onto [2] to move it."  # normalised: "use git rebase onto to move it"
    assert answer_contains(output, ["git rebase --onto"]) == 1.0  # normalised: "git rebase onto"
    assert answer_contains(output, ["cherry-pick", "Rebase  --ONTO"]) == 1.0  # the second one
    assert answer_contains(output, ["git merge"]) == 0.0
    # a substring, not whole tokens: punctuation removal glues words ("git-reset(1)" -> "gitreset1")
    assert answer_contains("See git-reset(1).", ["reset"]) == 1.0
    assert answer_contains("Maintain the branch.", ["main"]) == 1.0  # and so this counts too
    assert answer_contains("It takes 14 days [1].", ["14 days"]) == 1.0
    assert answer_contains(output, []) is None
    assert answer_contains(output, ["  "]) is None  # a blank answer is not an answer
    assert answer_contains(output, ["The", "?"]) is None  # nor one that normalises to nothing


def test_exact_match():
    assert exact_match("The Cat!", ["cat"]) == 1.0  # SQuAD: "the cat!" -> "cat"
    assert exact_match("  Git   Rebase ", ["git rebase"]) == 1.0
    assert exact_match("git rebase.", ["git rebase"]) == 1.0  # punctuation is forgiven
    assert exact_match("Elira Vantress [1].", ["Elira Vantress"]) == 1.0  # the marker is dropped
    assert exact_match("It was Elira Vantress.", ["Elira Vantress"]) == 0.0
    assert exact_match("git rebase", ["merge", "GIT REBASE"]) == 1.0
    assert exact_match("git rebase", []) is None


def test_answer_f1():
    # SQuAD's own example: "the big red dog" -> [big, red, dog], "red dog" -> [red, dog]:
    # common 2, P 2/3, R 2/2 -> F1 = 2 * (2/3) * 1 / (2/3 + 1) = 0.8
    assert answer_f1("the big red dog", ["red dog"]) == pytest.approx(0.8)
    # output [default, branch, is, main] (article and marker gone); answer [main, branch]:
    # common 2, P 2/4, R 2/2 -> 2 * 0.5 / 1.5 = 2/3
    assert answer_f1("The default  BRANCH is main [2].", ["main branch"]) == pytest.approx(2 / 3)
    # best over answers: "master" -> 0; "the main" -> [main]: P 1/4, R 1 -> 0.4;
    # "branch is main" -> common 3, P 3/4, R 1 -> 6/7
    assert answer_f1("The default branch is main", ["master", "the main", "branch is main"]) \
        == pytest.approx(6 / 7)
    # duplicated tokens count by multiplicity: output [x, x, y], answer [x, y, y]: common x:1 y:1 = 2
    # P 2/3, R 2/3 -> 2/3
    assert answer_f1("x x y", ["X Y y"]) == pytest.approx(2 / 3)
    assert answer_f1("nothing here", ["main"]) == 0.0
    assert answer_f1("", ["main"]) == 0.0
    assert answer_f1("[1]", ["main"]) == 0.0  # only a marker: no tokens
    assert answer_f1("Main!", ["main"]) == 1.0
    assert answer_f1("main", []) is None


def test_abstention_is_the_fixed_phrase_up_to_normalisation():
    assert ABSTENTION_PHRASE == "The passages do not contain the answer."
    assert abstention(ABSTENTION_PHRASE) == 1.0
    assert abstention("the passages do NOT contain the answer") == 1.0  # case, no period
    assert abstention("Sorry: the passages do not contain the answer [2]; ask again.") == 1.0
    assert abstention("The passages do not contain an answer.") == 1.0  # articles are dropped
    assert abstention("The passages contain the answer: 1847 [1].") == 0.0
    assert abstention("The passages don't contain the answer.") == 0.0  # "dont": not the phrase
    assert abstention("") == 0.0


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
        # markers and the period dropped: [create, it, with, git, branch], 5 tokens,
        # common {git, branch} = 2: P 2/5, R 2/2 -> 2*(2/5)/(7/5) = 4/7
        "answer_f1": pytest.approx(4 / 7),
        "exact_match": 0.0,
        "citation_precision": 0.5,  # {branching, intro}: one relevant
        "abstention": None,         # an answerable item
    }


def test_an_unanswerable_item_is_scored_by_abstention_only():
    abstains = item_scores(retrieved=RETRIEVED, relevant=["tags"], k=5,
                           output="The passages do not contain the answer [1].", answers=[], cited=["intro"],
                           unanswerable=True)
    assert abstains == {
        "hit_at_k": 0.0, "mrr_at_k": 0.0, "recall_at_k": 0.0,  # tags never retrieved
        "answer_contains": None, "answer_f1": None, "exact_match": None,
        "citation_precision": 0.0,  # cites intro, not tags
        "abstention": 1.0,
    }
    answers = item_scores(retrieved=[], relevant=[], k=0, output="It is git branch.", answers=["git branch"],
                          cited=[], unanswerable=True)
    assert answers["abstention"] == 0.0
    # even with answers given, an unanswerable item gets no answer metric
    assert (answers["answer_contains"], answers["answer_f1"], answers["exact_match"]) == (None, None, None)


def test_item_scores_without_labels_are_all_none():
    scores = item_scores(retrieved=RETRIEVED, relevant=[], k=5, output="x", answers=[], cited=["intro"])
    assert scores == dict.fromkeys(METRICS)


def test_summarize_averages_each_metric_over_the_items_it_applies_to():
    items = [
        {**dict.fromkeys(METRICS), "answer_f1": 1.0, "exact_match": 1.0},  # answerable
        {**dict.fromkeys(METRICS), "abstention": 1.0},                     # unanswerable, abstained
        {**dict.fromkeys(METRICS), "abstention": 0.0},                     # unanswerable, answered
        {"answer_f1": 0.25, "exact_match": 0.0},  # scored before `abstention` existed: no key at all
        {**dict.fromkeys(METRICS), "abstention": 1.0},
    ]
    summary = summarize(items, [], [])
    assert summary["abstention"] == pytest.approx(2 / 3)   # (1 + 0 + 1) / 3 unanswerable items
    assert summary["answer_f1"] == pytest.approx(0.625)    # (1 + 0.25) / 2 answerable items
    assert summary["exact_match"] == pytest.approx(0.5)    # (1 + 0) / 2
    assert summary["hit_at_k"] is None and summary["items"] == 5


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
    scores = item_scores(retrieved=[], relevant=["b"], k=0, output="x", answers=["x"], cited=[])
    assert (scores["hit_at_k"], scores["mrr_at_k"], scores["recall_at_k"]) == (None, None, None)
    assert scores["exact_match"] == 1.0
