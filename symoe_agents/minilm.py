"""all-MiniLM-L6-v2 sentence embeddings in numpy: the same model and arithmetic as
sentence-transformers, without importing torch and transformers.

Why: skill alignment embeds a few hundred short keywords per batch. sentence-transformers
takes 4-5 s of imports on these 2 cores before it embeds anything (torch, transformers,
scikit-learn), and on the embedded CPU pool that import sat between the skill group and
the expert groups of every run. Here the imports are numpy, ``tokenizers`` and
``safetensors`` (0.2 s), and the forward pass over 500 keywords takes about 0.1 s.

The model is the sentence-transformers pipeline of the packaged folder: BERT (6 layers,
12 heads, 384 wide, GELU with erf, LayerNorm eps from config.json), mean pooling over the
attention mask (1_Pooling), then unit length (2_Normalize). tests/test_alignment.py checks
the vectors and every nearest-skill choice against sentence-transformers itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_BATCH_TOKENS = 8192  # padded tokens per forward pass: one long text does not pad 255 short ones


def _erf(x: np.ndarray) -> np.ndarray:
    """erf with a fractional error below 1.2e-7 (the Chebyshev-fitted erfc of Press et al.,
    Numerical Recipes, section 6.2): numpy has no erf, and float32 GELU needs no more."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0).astype(np.float32, copy=False)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


_FILES = ("config.json", "sentence_bert_config.json", "modules.json", "1_Pooling/config.json", "model.safetensors", "tokenizer.json")


def read_settings(folder: Path) -> tuple[dict, dict, bool]:
    """(config.json, sentence_bert_config.json, normalizes) of a folder this module can run:
    a mean-pooled BERT with GELU in safetensors. Raises ValueError saying what is wrong
    (preflight calls it, so a bad folder stops a run before any server starts)."""
    missing = [f for f in _FILES if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks {', '.join(missing)}: not a sentence-transformers folder in safetensors")
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        st = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder}: cannot read its settings ({exc})") from None
    if not all(isinstance(x, dict) for x in (cfg, st, pooling)) or not isinstance(modules, list):
        raise ValueError(f"{folder}: its settings files are not sentence-transformers settings")
    if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
        raise ValueError(f"{folder} is not a BERT model with GELU; use method = 'sentence-transformers'")
    if not pooling.get("pooling_mode_mean_tokens") or any(
        pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ):
        raise ValueError(f"{folder} does not mean-pool; use method = 'sentence-transformers'")
    normalize = any(isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize") for m in modules)
    return cfg, st, normalize


class MiniLM:
    """A BERT sentence encoder loaded from a sentence-transformers folder (safetensors)."""

    def __init__(self, folder: str | Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = Path(folder)
        cfg, st, self.normalize = read_settings(folder)
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg["layer_norm_eps"])
        self.max_len = min(int(st.get("max_seq_length") or 512), int(cfg["max_position_embeddings"]))
        # weight matrices transposed once, so every linear layer is one 2-D BLAS call
        self.w = {
            k.removeprefix("bert."): (np.ascontiguousarray(v.T) if k.endswith(".weight") and v.ndim == 2 and "embeddings" not in k else v)
            for k, v in load_file(str(folder / "model.safetensors")).items()
        }
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_len)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32. Texts go through in length order, in batches of at
        most ``_BATCH_TOKENS`` padded tokens."""
        out = np.zeros((len(texts), self.w["embeddings.word_embeddings.weight"].shape[1]), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        batches: list[list[int]] = [[]]
        for i in order:  # ascending length: the newest text is the batch's widest
            if batches[-1] and (len(batches[-1]) + 1) * len(encodings[i].ids) > _BATCH_TOKENS:
                batches.append([])
            batches[-1].append(i)
        for idx in batches:
            width = max(len(encodings[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            types = np.zeros_like(ids)
            mask = np.zeros((len(idx), width), dtype=np.float32)
            for row, i in enumerate(idx):
                e = encodings[i]
                ids[row, : len(e.ids)] = e.ids
                types[row, : len(e.ids)] = e.type_ids
                mask[row, : len(e.ids)] = 1.0
            out[idx] = self._forward(ids, types, mask)
        return out

    def _forward(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.w
        batch, width = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(width)][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        hidden = x.shape[-1]
        # (tokens, hidden) rows: a 3-D matmul would be a loop of small ones
        x = _layer_norm(x.reshape(batch * width, hidden), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        d = hidden // self.heads
        # padding keys get the most negative float added, as transformers' BERT does
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]

        def linear(h, name):
            return h @ w[f"{name}.weight"] + w[f"{name}.bias"]

        def split(h):
            return h.reshape(batch, width, self.heads, d).transpose(0, 2, 1, 3)

        for n in range(self.layers):
            p = f"encoder.layer.{n}"
            q = split(linear(x, f"{p}.attention.self.query"))
            k = split(linear(x, f"{p}.attention.self.key"))
            v = split(linear(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(d)) + bias
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * width, hidden)
            attn = linear(ctx, f"{p}.attention.output.dense")
            x = _layer_norm(attn + x, w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"], self.eps)
            h = linear(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.float32(np.sqrt(2.0))))
            out = linear(h, f"{p}.output.dense")
            x = _layer_norm(out + x, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], self.eps)
        x = x.reshape(batch, width, hidden)
        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        if self.normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)
