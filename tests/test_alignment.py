import sys

import numpy as np
import pytest

from conftest import llama_server_argv, pids_alive
from symoe_agents.alignment import (
    FALLBACK_WARNING,
    Aligner,
    AlignmentConfig,
    OpenAIEmbedder,
    make_embedder,
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


async def test_exact_alignment_keeps_known_keywords_only():
    al = Aligner(["algebra", "law"], None)
    assert await al.mapping({"algebra", "poetry"}) == {"algebra": "algebra"}
    assert al.method == "exact"


def test_auto_falls_back_with_a_warning_when_nothing_is_installed(monkeypatch):
    import symoe_agents.alignment as mod

    monkeypatch.setattr(mod, "sentence_transformers_available", lambda: False)
    assert make_embedder(AlignmentConfig()) == (None, FALLBACK_WARNING)
    assert make_embedder(AlignmentConfig(method="exact")) == (None, None)
    with pytest.raises(ValueError, match="needs base_url and model"):
        AlignmentConfig(method="openai")


async def test_minilm_maps_keywords_to_their_nearest_profile_skill():
    from conftest import require

    require(sentence_transformers_available(), 'needs "symoe-agents[embed]" (the Makefile installs it)')
    embedder, warning = make_embedder(AlignmentConfig())
    assert warning is None and "MiniLM" in embedder.name
    al = Aligner(["algebra", "molecular biology", "contract law", "thermodynamics"], embedder)
    got = await al.mapping({"linear equations", "genetics", "heat engines", "property law", "algebra"})
    assert got == {
        "linear equations": "algebra",
        "genetics": "molecular biology",
        "heat engines": "thermodynamics",
        "property law": "contract law",
        "algebra": "algebra",
    }


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
