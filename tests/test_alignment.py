import sys

import pytest

from conftest import pids_alive
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


@pytest.mark.skipif(not sentence_transformers_available(), reason='needs "symoe-agents[embed]"')
async def test_minilm_maps_keywords_to_their_nearest_profile_skill():
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
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path("smollm2-135m-instruct")),
         "--host", "127.0.0.1", "--port", str(port), "--embedding", "true", "--model_alias", "emb",
         "--api_key", "k-emb", "--logits_all", "false"],
        port, tmp_path / "log",
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
        assert set((await al.mapping({"algebra", "cells"})).values()) <= {"algebra", "biology"}
    finally:
        await proc.stop(5)
    assert pids_alive([proc.pid]) == []
