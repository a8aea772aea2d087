import sys

import numpy as np
import pytest

from conftest import llama_server_argv, pids_alive
from symoe_agents.alignment import (
    FALLBACK_WARNING,
    Aligner,
    AlignmentConfig,
    OpenAIEmbedder,
    MiniLMEmbedder,
    SentenceTransformerEmbedder,
    make_embedder,
    minilm_available,
    nearest,
    sentence_transformers_available,
)


@pytest.mark.parametrize(
    "queries, vocab, expected",
    [
        ([[1, 0]], [[0, 1], [1, 0.1]], [1]),
        ([[0, 2], [3, 3]], [[1, 0], [0, 1], [1, 1]], [1, 2]),  # cosine, not dot product
        ([], [[1, 0]], []),
    ],
)
def test_nearest_is_cosine_top1(queries, vocab, expected):
    assert nearest(queries, vocab) == expected


class _Fixed:
    """An embedder with chosen vectors: the similarity it yields is known by hand."""

    name = "fixed"

    def __init__(self, vectors):
        self.vectors = vectors

    async def embed(self, texts):
        return [self.vectors[t] for t in texts]


async def test_matches_report_the_cosine_of_the_nearest_keyword():
    vectors = {"algebra": [1, 0], "law": [0, 1], "equations": [3, 1], "courts": [-1, 2]}
    al = Aligner(["algebra", "law"], _Fixed(vectors))
    got = await al.matches({"equations", "courts", "law"})
    # cos((3,1),(1,0)) = 3/sqrt(10); cos((-1,2),(0,1)) = 2/sqrt(5); verbatim: 1
    assert got.keys() == {"equations", "courts", "law"}
    assert got["law"] == ("law", 1.0)
    assert got["equations"][0] == "algebra" and got["equations"][1] == pytest.approx(3 / 10**0.5, rel=1e-6)
    assert got["courts"][0] == "law" and got["courts"][1] == pytest.approx(2 / 5**0.5, rel=1e-6)
    assert await al.mapping({"equations", "courts"}) == {"equations": "algebra", "courts": "law"}


async def test_exact_alignment_keeps_known_keywords_only():
    al = Aligner(["algebra", "law"], None)
    assert await al.mapping({"algebra", "poetry"}) == {"algebra": "algebra"}
    assert al.method == "exact"


def test_auto_falls_back_with_a_warning_when_nothing_is_installed(monkeypatch):
    import symoe_agents.alignment as mod

    monkeypatch.setattr(mod, "sentence_transformers_available", lambda: False)
    monkeypatch.setattr(mod, "minilm_available", lambda: False)
    assert make_embedder(AlignmentConfig()) == (None, FALLBACK_WARNING)
    assert make_embedder(AlignmentConfig(method="exact")) == (None, None)
    with pytest.raises(ValueError, match="needs base_url and model"):
        AlignmentConfig(method="openai")


async def test_minilm_maps_keywords_to_their_nearest_profile_skill():
    from conftest import require

    require(minilm_available(), 'needs "symoe-agents[embed]" (the Makefile installs it)')
    embedder, warning = make_embedder(AlignmentConfig())
    assert warning is None and isinstance(embedder, MiniLMEmbedder) and "MiniLM" in embedder.name
    al = Aligner(["algebra", "molecular biology", "contract law", "thermodynamics"], embedder)
    got = await al.mapping({"linear equations", "genetics", "heat engines", "property law", "algebra"})
    assert got == {
        "linear equations": "algebra",
        "genetics": "molecular biology",
        "heat engines": "thermodynamics",
        "property law": "contract law",
        "algebra": "algebra",
    }


def _validation_keywords() -> tuple[list[str], list[str]]:
    """The shipped profiles' vocabulary, and every keyword SmolLM2 wrote for the 24
    validation questions when they were made (plus texts at the edges of the tokenizer)."""
    import json
    from importlib.resources import files

    from symoe_agents.profiles import load_profiles, profile_vocabulary

    folder = files("symoe_agents").joinpath("data", "embedded-profiles")
    vocabulary = profile_vocabulary(load_profiles(str(folder), ["smollm2", "smollm2-focused", "gemma3"]))
    queries = set()
    for line in folder.joinpath("skills.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        queries |= set(row["keywords"])
        for sample in row["samples"]:
            queries |= {w.strip(" .,:;()*") for w in sample.split(",") if w.strip()}
    edges = ["", "a", "Ünïcödé thermodynamics", "量子力学", "genetics", "heat engines", "property law"]
    return vocabulary, sorted(q for q in queries if q) + edges


async def test_the_numpy_minilm_gives_sentence_transformers_vectors_and_choices():
    """symoe's numpy forward pass against the library it stands in for, on real inputs:
    the same vectors to float32 rounding and the same nearest skill for every keyword."""
    from conftest import require

    require(minilm_available() and sentence_transformers_available(), 'needs "symoe-agents[embed]" (the Makefile installs it)')
    vocabulary, queries = _validation_keywords()
    assert len(vocabulary) >= 10 and len(queries) >= 100
    ours, reference = MiniLMEmbedder(), SentenceTransformerEmbedder()
    a = np.asarray(await ours.embed(vocabulary + queries))
    b = np.asarray(await reference.embed(vocabulary + queries))
    assert a.shape == b.shape == (len(vocabulary) + len(queries), 384)
    assert np.abs(a - b).max() < 1e-5
    v = len(vocabulary)
    assert nearest(a[v:], a[:v]) == nearest(b[v:], b[:v])
    # a denser test: each text's nearest other text, over texts that tokenize differently
    # (uncased BERT reads "Diplomacy\n" as "diplomacy": equal vectors, a tie either way)
    tokenizer = ours._load().tokenizer
    first: dict[tuple, int] = {}
    for i, text in enumerate(vocabulary + queries):
        first.setdefault(tuple(tokenizer.encode(text).ids), i)
    keep = sorted(first.values())

    def nearest_other(x):
        sims = x[keep] @ x[keep].T
        np.fill_diagonal(sims, -2)
        return sims.argmax(axis=1).tolist()

    assert len(keep) >= 100 and nearest_other(a) == nearest_other(b)
    # a text longer than the model's 256 positions is cut there by both
    long_text = ["thermodynamics " * 400]
    assert np.abs(np.asarray(await ours.embed(long_text)) - np.asarray(await reference.embed(long_text))).max() < 1e-5
    # and through the aligner, as routing uses it
    got = await Aligner(vocabulary, ours).mapping(set(queries))
    want = await Aligner(vocabulary, reference).mapping(set(queries))
    assert got == want


def test_minilm_refuses_a_model_it_does_not_implement(tmp_path):
    import json
    import shutil

    from symoe_agents.alignment import default_minilm_path
    from symoe_agents.minilm import MiniLM

    copy = tmp_path / "m"
    shutil.copytree(default_minilm_path(), copy)
    pooling = copy / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not mean-pool; use method = 'sentence-transformers'"):
        MiniLM(copy)
    # found by preflight, before a run pays for its skill answers
    from symoe_agents.alignment import alignment_problems

    (problem,) = alignment_problems(AlignmentConfig(method="minilm", model_path=str(copy)))
    assert "does not mean-pool" in problem
    assert alignment_problems(AlignmentConfig(method="minilm")) == []  # the packaged model
    assert alignment_problems(AlignmentConfig()) == []
    (problem,) = alignment_problems(AlignmentConfig(method="sentence-transformers", model_path=str(tmp_path / "nope")))
    assert "is not a folder" in problem


async def test_openai_compatible_embeddings_endpoint_on_a_real_llamacpp_server(tmp_path, monkeypatch):
    from symoe_agents.servers import ServerProcess, free_port
    from symoe_agents.servers.embedded import embedded_model_path
    from symoe_agents.servers.probe import http_get

    port = free_port()
    proc = ServerProcess(
        "embed",
        llama_server_argv(embedded_model_path("smollm2-135m-instruct"), port, "emb", "--embeddings", "--pooling", "mean"),
        port, tmp_path / "log", env={"LLAMA_API_KEY": "k-emb"},
    )  # fmt: skip
    proc.spawn()
    try:

        async def ready(p):
            return (await http_get("127.0.0.1", p, "/v1/models", {"Authorization": "Bearer k-emb"}))[0] == 200

        await proc.wait_ready(ready, 60)
        monkeypatch.setenv("SYMOE_TEST_EMB_KEY", "k-emb")
        emb = OpenAIEmbedder(f"http://127.0.0.1:{port}/v1", "emb", "SYMOE_TEST_EMB_KEY")
        vectors = await emb.embed(["algebra", "biology", "law"])
        assert len(vectors) == 3 and len({len(v) for v in vectors}) == 1 and len(vectors[0]) > 16
        al = Aligner(["algebra", "biology"], emb)
        mapped = await al.mapping({"algebra", "cells"})
        assert set(mapped) == {"algebra", "cells"}  # "cells" is mapped through the endpoint's vectors
        # embedded as the aligner does (the vocabulary in one request, the new keyword in another):
        # the vocabulary in one request and the keyword in another, as the aligner sends them
        a, b = (np.array(v) for v in await emb.embed(["algebra", "biology"]))
        (c,) = (np.array(v) for v in await emb.embed(["cells"]))

        def cos(x, y):
            return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

        assert mapped["cells"] == ("algebra" if cos(c, a) > cos(c, b) else "biology")  # nearest, by hand
    finally:
        await proc.stop(5)
    assert pids_alive([proc.pid]) == []
