import numpy as np
import pytest

from indexer.fast_tokenizer import padded_copy, private_copy

TEXTS = ["graft", "An index generation is written to a temp file, fsynced and renamed. " * 40,
         "naïve café, déjà vu: 日本語 and emoji 🚀", "", "Who founded the Zorblaven Observatory?"]


def test_padded_copy_encodes_batches_as_the_transformers_tokenizer(embedder):
    tokenizer = embedder.tokenizer
    core = padded_copy(tokenizer, 64)
    expected = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    encodings = core.encode_batch(TEXTS)
    assert np.array_equal(np.array([e.ids for e in encodings]), expected["input_ids"])
    assert np.array_equal(np.array([e.attention_mask for e in encodings]), expected["attention_mask"])
    assert np.array_equal(np.array([e.type_ids for e in encodings]), expected["token_type_ids"])
    assert max(len(e.ids) for e in encodings) == 64  # the long text was cut


def test_copies_leave_the_shared_tokenizer_alone(embedder):
    tokenizer = embedder.tokenizer
    before = tokenizer(TEXTS[1])["input_ids"]
    padded_copy(tokenizer, 8)
    assert private_copy(tokenizer).encode(TEXTS[1]).ids == before == tokenizer(TEXTS[1])["input_ids"]


def test_a_slow_tokenizer_is_refused():
    with pytest.raises(TypeError):
        private_copy(object())
