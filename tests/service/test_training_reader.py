"""The `reader` target: quote the sentence that holds the answer with its passage number, then
answer citing it; abstain with the fixed phrase when no passage holds the answer."""

from evaluation.metrics import ABSTENTION_PHRASE, answer_contains, cited_numbers
from service.sentences import sentences, supporting_sentence
from service.training_data import reader_target

PASSAGE = ("DESCRIPTION\nThe Zorblax Institute is a college of weather lore in Quenmoor. It was founded\n"
           "in 1847 by Elira Vantress. Its library holds nine hundred fog charts.")


def test_the_target_quotes_the_sentence_that_holds_the_answer_then_answers():
    target = reader_target("Elira Vantress", PASSAGE, 2)
    assert target == '"It was founded in 1847 by Elira Vantress." [2]\nAnswer: Elira Vantress [2].'
    assert answer_contains(target, ["Elira Vantress"]) == 1.0 and cited_numbers(target) == [2]


def test_a_long_sentence_is_quoted_around_the_answer():
    words = [f"w{i}" for i in range(80)]
    text = " ".join(words[:60] + ["the", "answer", "here"] + words[60:]) + "."
    quote = supporting_sentence(text, "the answer here", max_words=12)
    assert "the answer here" in quote and len(quote.split()) <= 12 and quote in text


def test_no_passage_with_the_answer_means_the_abstention_phrase():
    assert ABSTENTION_PHRASE == "The passages do not contain the answer."
    assert reader_target("Elira Vantress", None, None) == ABSTENTION_PHRASE


def test_sentences_keep_headings_and_list_items_apart():
    assert sentences("OPTIONS\n- --depth <n>\n- Create a shallow\n  clone. It is faster.") == [
        "OPTIONS", "--depth <n>", "Create a shallow clone.", "It is faster."]
