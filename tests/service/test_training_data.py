"""The span check of model-written questions (service/questions.py `is_span`): an answer is kept only
when it is a span of its chunk, up to case and whitespace (not up to the answer metrics' SQuAD
normalisation)."""

import pytest

from service.questions import is_span

CHUNK = "The Velt river flows through\nQuenmoor down to the grey-green sea."


@pytest.mark.parametrize("answer", [
    "the velt river",                      # case
    "Velt river flows  through Quenmoor",  # whitespace runs, the chunk's newline
    "the grey-green sea",
])
def test_a_span_of_the_chunk_is_kept(answer):
    assert is_span(answer, CHUNK)


# Each of these is a span after SQuAD normalisation (which drops articles and punctuation), none
# of them a span of the chunk's text: a target the model could not have copied from it.
@pytest.mark.parametrize("answer", [
    "a Velt river",        # -> "velt river"
    "the greygreen sea",   # -> "greygreen sea", as the chunk's "the grey-green sea" becomes
    "Velt river, flows",   # -> "velt river flows"
])
def test_text_that_is_not_a_span_is_dropped(answer):
    assert not is_span(answer, CHUNK)
