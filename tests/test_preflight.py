import sys

from symoe_agents.config import load_config, parse_config
from symoe_agents.preflight import preflight

from conftest import ROOT

STANDIN = ROOT / "tests" / "standins" / "sglang_standin.py"


def cfg(models, **extra):
    names = list(models)
    return parse_config({"models": models, "roles": {"skill_inferencer": names[0], "experts": names, "aggregator": names[0]}, **extra}, "t")


def test_embedded_pool_passes():
    assert preflight(load_config()) == []


def test_each_problem_names_the_model_and_what_to_change(tmp_path, monkeypatch):
    monkeypatch.delenv("SYMOE_NO_SUCH_KEY", raising=False)
    no_sglang = tmp_path / "py"
    no_sglang.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")  # a python without sglang
    no_sglang.chmod(0o755)
    problems = preflight(cfg({
        "gguf": {"backend": "llamacpp", "model_path": str(tmp_path / "missing.gguf")},
        "ls": {"backend": "llamacpp", "embedded": "gemma3-270m", "executable": str(tmp_path / "bin" / "llama-server")},
        "sg": {"backend": "sglang", "model_path": "org/M", "python": str(no_sglang)},
        "sg2": {"backend": "sglang", "model_path": "org/M", "python": str(tmp_path / "nope" / "python")},
        "vl": {"backend": "vllm", "model_path": "org/M", "command": ["/nonexistent/vllm", "serve"]},
        "cmd": {"backend": "command", "command": ["no-such-server-binary", "--port", "{port}"], "served_model_name": "x"},
        "api": {"backend": "openai", "base_url": "https://x.example/v1", "model": "m", "api_key_env": "SYMOE_NO_SUCH_KEY"},
    }, schedule={"gpus": [0]}))  # fmt: skip
    text = "\n".join(map(str, problems))
    assert "model 'gguf': model file" in text and "fix 'model_path'" in text
    assert f"model 'ls': llama-server '{tmp_path / 'bin' / 'llama-server'}' not found or not executable; fix 'executable'" in text
    assert "model 'sg': " in text and "cannot import sglang" in text
    assert "model 'sg2': " in text and "not found" in text
    assert "model 'vl': '/nonexistent/vllm' not found" in text
    assert "model 'cmd': 'no-such-server-binary' not found" in text
    assert "model 'api': environment variable SYMOE_NO_SUCH_KEY is not set" in text


def test_gpu_count_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    py = tmp_path / "sglang-python"
    py.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    py.chmod(0o755)
    model = {"backend": "sglang", "model_path": "org/M", "python": str(py), "tp_size": 2}
    problems = preflight(cfg({"g": model}))
    assert any("needs 2 GPU(s) but nvidia-smi is not found" in str(p) for p in problems)
    problems = preflight(cfg({"g": model}, schedule={"gpus": [0]}))
    assert any("needs 2 GPU(s), 1 available" in str(p) for p in problems)
    assert preflight(cfg({"g": model}, schedule={"gpus": [0, 1]})) == []


def test_a_missing_llama_server_says_how_to_build_it(monkeypatch, tmp_path):
    import shutil

    from symoe_agents.servers import llamacpp

    monkeypatch.setattr(llamacpp.sys, "executable", str(tmp_path / "python"))  # nothing beside it
    monkeypatch.setattr(shutil, "which", lambda name: None)  # and nothing on PATH
    problems = preflight(load_config())
    text = "\n".join(map(str, problems))
    assert "llama-server not found beside" in text and "python -m symoe_agents.servers.llama_build" in text
    assert {p.model for p in problems} >= {"smollm2", "gemma3"}
