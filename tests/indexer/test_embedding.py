import threading

import numpy as np
import pytest
import torch

from indexer.embedding import Embedder, packaged_model_dir, resolve_model_dir


@pytest.fixture(params=["onnx", "torch"])
def each_backend(request) -> Embedder:
    return request.getfixturevalue("embedder" if request.param == "onnx" else "torch_embedder")


def test_packaged_names_resolve_to_the_shipped_folder():
    folder = packaged_model_dir()
    assert (folder / "modules.json").is_file()
    assert resolve_model_dir("all-MiniLM-L6-v2") == folder
    assert resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2") == folder


def test_unknown_model_is_a_clear_error_and_never_the_hub(tmp_path):
    with pytest.raises(ValueError, match="existing local"):
        Embedder.load("BAAI/bge-small-en-v1.5")
    with pytest.raises(ValueError, match="existing local"):
        Embedder.load(str(tmp_path / "missing"))


def test_unknown_backend_and_onnx_without_a_cache_folder_are_clear_errors():
    with pytest.raises(ValueError, match="not one of"):
        Embedder.load(backend="tensorrt")
    with pytest.raises(ValueError, match="cache folder"):
        Embedder.load(backend="onnx")


def test_properties(embedder, torch_embedder):
    assert (embedder.backend, torch_embedder.backend) == ("onnx", "torch")
    assert embedder.name == "all-MiniLM-L6-v2"
    assert embedder.dimension == 384
    assert embedder.max_seq_length == 256
    assert embedder.count_tokens("hello world") == 4  # [CLS] hello world [SEP]


def test_encode_is_normalised_float32(each_backend):
    vectors = each_backend.encode(["The cat sat on the mat.", "A kitten rested on a rug.", "Stock prices fell."])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert each_backend.encode([]).shape == (0, 384)


def test_encode_from_several_threads(each_backend):
    expected = each_backend.encode(["thread safety"])
    results = []
    threads = [threading.Thread(target=lambda: results.append(each_backend.encode(["thread safety"])))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


def test_a_query_on_one_thread_matches_the_batch_and_restores_the_thread_count(each_backend):
    before = torch.get_num_threads()
    texts = [f"sentence number {i} about lighthouses" for i in range(8)]
    batch = each_backend.encode(texts)
    single = each_backend.encode(texts[:1])
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(single[0], batch[0], atol=1e-5)
