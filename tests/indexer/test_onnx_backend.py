import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import indexer.onnx_backend as onnx_backend
from indexer.embedding import Embedder, packaged_model_dir
from indexer.onnx_backend import OnnxEncoder, OnnxUnsupported, cache_key

GIT_DOC = Path("/usr/share/doc/git-doc")


def git_doc_texts() -> list[str]:
    """Real text of varied length: short lines, whole paragraphs, pages past the 256-token limit."""
    pages = [p.read_text(errors="replace") for p in sorted(GIT_DOC.glob("git-*.txt"))[:12]]
    assert pages, "Debian's git-doc package is missing (installed by .ci/run)"
    return [line for page in pages for line in page.splitlines()[:3] if line.strip()] + \
        [page[:800] for page in pages] + pages[:4]


def test_onnx_embeddings_are_torch_embeddings(embedder, torch_embedder):
    texts = git_doc_texts()
    onnx, torch = embedder.encode(texts), torch_embedder.encode(texts)
    assert onnx.shape == torch.shape == (len(texts), 384)
    assert np.sum(onnx * torch, axis=1).min() > 0.9999
    for text in texts[:3] + texts[-2:]:  # the one-thread query session agrees too
        assert float(embedder.encode([text])[0] @ torch_embedder.encode([text])[0]) > 0.9999


def test_retrieval_ranks_as_with_torch(embedder, torch_embedder):
    texts = git_doc_texts()
    queries = ["how to undo a commit", "show the history of a file", "merge two branches"]
    top_onnx = np.argsort(-(embedder.encode(queries) @ embedder.encode(texts).T), axis=1)[:, :5]
    top_torch = np.argsort(-(torch_embedder.encode(queries) @ torch_embedder.encode(texts).T), axis=1)[:, :5]
    assert (top_onnx == top_torch).all()


def test_the_export_is_cached_and_reused(embedding_cache_dir, monkeypatch):
    Embedder.load(backend="onnx", onnx_cache_dir=embedding_cache_dir)  # exported by now
    (path,) = embedding_cache_dir.glob(f"model-{cache_key(packaged_model_dir())}/model.onnx")
    before = path.stat()
    monkeypatch.setattr(onnx_backend, "export", lambda *a: pytest.fail("exported again"))
    assert Embedder.load(backend="onnx", onnx_cache_dir=embedding_cache_dir).backend == "onnx"
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_damaged_cache_file_is_exported_again(tmp_path, torch_embedder, caplog):
    first = Embedder.load(backend="onnx", onnx_cache_dir=tmp_path)
    (path,) = tmp_path.glob("*/model.onnx")
    path.write_bytes(path.read_bytes()[:4096])  # cut short, as by a full disk
    with caplog.at_level(logging.WARNING):
        again = Embedder.load(backend="onnx", onnx_cache_dir=tmp_path)
    assert "exporting it again" in caplog.text
    assert again.backend == "onnx"
    np.testing.assert_allclose(again.encode(["a query"]), first.encode(["a query"]), atol=1e-5)
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_an_export_that_disagrees_with_torch_is_refused_and_torch_serves(tmp_path, monkeypatch, caplog):
    def wrong(self, texts, batch_size, single_thread=False):
        return np.tile(np.eye(1, 384, dtype=np.float32), (len(texts), 1))

    monkeypatch.setattr(OnnxEncoder, "encode", wrong)
    with caplog.at_level(logging.WARNING):
        embedder = Embedder.load(backend="onnx", onnx_cache_dir=tmp_path)
    assert embedder.backend == "torch"
    assert "differ from torch" in caplog.text
    vectors = embedder.encode(["cats", "stock prices"])
    assert float(vectors[0] @ vectors[1]) < 0.9


def test_a_pipeline_the_backend_does_not_reproduce_runs_on_torch(tmp_path, caplog):
    folder = tmp_path / "max-pooled"
    shutil.copytree(packaged_model_dir(), folder)
    config = json.loads((folder / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        embedder = Embedder.load(str(folder), backend="onnx", onnx_cache_dir=tmp_path / "cache")
    assert embedder.backend == "torch"
    assert "pooling 'max'" in caplog.text
    assert not (tmp_path / "cache").exists()


def test_pooling_mode_refuses_unknown_pipelines(torch_embedder):
    model = torch_embedder._model
    assert onnx_backend.pooling_mode(model) == "mean"
    with pytest.raises(OnnxUnsupported, match="pipeline"):
        onnx_backend.pooling_mode([model[0]])
