"""The span check of model-written questions: an answer is kept only when it is a span of its chunk,
up to case and whitespace (not up to the answer metrics' SQuAD normalisation)."""

import pytest

from service.training_data import SourceChunk, parse_model_question

CHUNK = SourceChunk(1, "velt", "The Velt river flows through\nQuenmoor down to the grey-green sea.")


@pytest.mark.parametrize("answer", [
    "the velt river",                      # case
    "Velt river flows  through Quenmoor",  # whitespace runs, the chunk's newline
    "the grey-green sea",
])
def test_a_span_of_the_chunk_is_kept(answer):
    qa = parse_model_question(f"Q: Where does it flow?\nA: {answer}", CHUNK)
    assert qa is not None and qa.answer == answer and qa.origin == "model"


# Each of these is a span after SQuAD normalisation (which drops articles and punctuation), none
# of them a span of the chunk's text: a target the model could not have copied from it.
@pytest.mark.parametrize("answer", [
    "a Velt river",        # -> "velt river"
    "the greygreen sea",   # -> "greygreen sea", as the chunk's "the grey-green sea" becomes
    "Velt river, flows",   # -> "velt river flows"
])
def test_text_that_is_not_a_span_is_dropped(answer):
    assert parse_model_question(f"Q: Where does it flow?\nA: {answer}", CHUNK) is None
