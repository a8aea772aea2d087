import sys
from importlib.resources import files

import pytest

from symoe_agents.config import load_config, parse_config
from symoe_agents.preflight import preflight
from symoe_agents.prompting import TEMPLATE_NAMES

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


def prompts_copy(tmp_path):
    """A prompts_dir holding copies of the built-in templates, to break one at a time."""
    folder = tmp_path / "prompts"
    folder.mkdir()
    for name in TEMPLATE_NAMES:
        (folder / f"{name}.md").write_text(files("symoe_agents.prompts").joinpath(f"{name}.md").read_text())
    return folder


def prompt_messages(prompts_dir):
    config = load_config().model_copy(update={"prompts_dir": prompts_dir})
    return [p.message for p in preflight(config) if p.model is None]


def test_a_copy_of_the_built_in_prompts_passes(tmp_path):
    assert prompt_messages(prompts_copy(tmp_path)) == []


def test_the_templates_checked_are_every_built_in_one():
    shipped = {f.name.removesuffix(".md") for f in files("symoe_agents.prompts").iterdir() if f.name.endswith(".md")}
    assert shipped == set(TEMPLATE_NAMES)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_template_a_run_renders_is_checked(tmp_path, name):
    folder = prompts_copy(tmp_path)
    (folder / f"{name}.md").unlink()
    assert prompt_messages(folder) == [
        f"prompts_dir {folder}: template {name}.md not found ({folder / name}.md); copy it from the built-in prompts in {files('symoe_agents.prompts')}"
    ]


@pytest.mark.parametrize(("name", "text", "says"), [
    ("expert", "Question: {question}\n{foo}\n{answer_instruction}", "template expert.md uses {foo}, which symoe does not provide; it provides: answer_instruction, question"),
    ("aggregator", "{question}\n{answer_instruction}", "template aggregator.md lacks {responses}, which symoe provides and the prompt needs; add it"),
    ("skills", "Skills for {question", "template skills.md is malformed (expected '}' before end of string)"),
    ("answer_math", "Write \\boxed{X}.", "template answer_math.md uses {X}, which symoe does not provide; it provides: nothing"),
    ("answer_multiple_choice", "Pick one of {letters!z}.", "template answer_multiple_choice.md is malformed (ValueError: Unknown conversion specifier z)"),
])  # fmt: skip
def test_a_bad_template_is_a_preflight_problem_naming_the_file_and_the_variable(tmp_path, name, text, says):
    folder = prompts_copy(tmp_path)
    (folder / f"{name}.md").write_text(text)
    messages = prompt_messages(folder)
    assert len(messages) == 1 and messages[0].startswith(f"prompts_dir {folder}: {says}")


def test_a_prompts_dir_that_is_not_a_folder_is_one_problem(tmp_path):
    assert prompt_messages(tmp_path / "absent") == [
        f"prompts_dir {tmp_path / 'absent'} is not a folder; fix 'prompts_dir' or remove it to use the built-in prompts"
    ]


def test_servers_up_for_named_models_renders_no_prompts(tmp_path):
    config = load_config().model_copy(update={"prompts_dir": tmp_path / "absent"})
    assert not [p for p in preflight(config, ["smollm2"]) if "prompts_dir" in p.message]


def test_config_validation_reports_a_bad_template(tmp_path):
    from typer.testing import CliRunner

    from symoe_agents.cli import app

    folder = prompts_copy(tmp_path)
    (folder / "expert.md").write_text("{question} {foo} {answer_instruction}")
    path = tmp_path / "c.toml"
    path.write_text('prompts_dir = "prompts"\n[models.a]\nbackend = "llamacpp"\nmodel_path = "a.gguf"\n'
                    '[roles]\nskill_inferencer = "a"\nexperts = ["a"]\naggregator = "a"\n')  # fmt: skip
    result = CliRunner().invoke(app, ["config", "--config", str(path)])
    assert result.exit_code == 2
    assert f"error: {path}: prompts_dir {folder}: template expert.md uses {{foo}}, which symoe does not provide" in result.output


def llamacpp_model(**fields):
    return cfg({"m": {"backend": "llamacpp", "embedded": "gemma3-270m", **fields}})


def test_an_unknown_chat_format_is_refused_by_the_llama_server_that_would_run():
    from conftest import llama_server

    exe = llama_server()
    assert preflight(llamacpp_model(chat_format="gemma")) == []
    problems = preflight(llamacpp_model(chat_format="gemmma"))
    assert [p.model for p in problems] == ["m"]
    text = str(problems[0])
    assert f"chat_format 'gemmma' is not a chat template llama-server ({exe}) knows; use one of: " in text
    assert ", gemma, " in text and ", chatml, " in text and "llama-2" not in text  # its names, not llama-cpp-python's


def test_the_chat_templates_are_read_off_the_llama_server_it_runs(tmp_path):
    fake = tmp_path / "llama-server"  # refuses every template; its help lists two
    fake.write_text('#!/bin/sh\n[ "$1" = "--help" ] || exit 1\n'
                    'echo "  list of built-in templates:"; echo "     alpha, beta-2"; echo "  (env: LLAMA_ARG_CHAT_TEMPLATE)"\n')  # fmt: skip
    fake.chmod(0o755)
    problems = preflight(llamacpp_model(chat_format="gamma", executable=str(fake)))
    assert [str(p) for p in problems] == [
        f"model 'm': chat_format 'gamma' is not a chat template llama-server ({fake}) knows; use one of: alpha, beta-2; "
        "or remove it to use the GGUF's own template"
    ]


def _llama_cpp_standin(root):
    """STAND-IN for llama-cpp-python (an optional extra that CI does not build): the parts the check reads, laid out as the real package lays them out: a
    registry of handlers by name in llama_chat_format, and the names its server builds
    itself, compared against ``settings.chat_format`` in server/model.py."""
    pkg = root / "llama_cpp"
    (pkg / "server").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "llama_chat_format.py").write_text(
        "class LlamaChatCompletionHandlerRegistry:\n"
        "    _chat_handlers = {'llama-2': None, 'chatml': None, 'mistral-instruct': None}\n"
    )
    (pkg / "server" / "__init__.py").write_text("")
    (pkg / "server" / "model.py").write_text(
        "def load(settings):\n"
        "    if settings.chat_format == 'llava-1-5':\n"
        "        return 'llava'\n"
    )


def test_an_unknown_chat_format_is_refused_for_llama_cpp_python_from_its_own_registry(tmp_path, monkeypatch):
    import sys

    # the stand-in always, so the test does not depend on an optional extra (and on whether
    # its server's own imports are installed); the python named in the config finds it first
    _llama_cpp_standin(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))

    def model(chat_format: str):
        return llamacpp_model(server="llama-cpp-python", python=sys.executable, chat_format=chat_format)

    assert preflight(model("llama-2")) == []
    assert preflight(model("llava-1-5")) == []  # built by its server
    problems = preflight(model("llama2"))
    text = str(problems[0])
    assert len(problems) == 1 and "chat_format 'llama2' is not a chat template llama-cpp-python knows; use one of: " in text
    assert ", llama-2, " in text and ", llava-1-5, " in text
