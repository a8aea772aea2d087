import pytest

from symoe_agents.config import load_config
from symoe_agents.errors import ConfigError

GOOD = """
k = 2
seed = 7
[models.local]
backend = "llamacpp"
model_path = "weights/m.gguf"
[models.gpu]
backend = "sglang"
model_path = "Qwen/Qwen2.5-7B-Instruct"
python = "/opt/sglang/bin/python"
mem_fraction_static = 0.8
[models.hosted]
backend = "openai"
base_url = "https://api.example.com/v1/"
model = "gpt-x"
api_key_env = "EXAMPLE_API_KEY"
sampling = { temperature = 0.0 }
[roles]
skill_inferencer = "local"
experts = ["local", "gpu"]
aggregator = "hosted"
[sampling.expert]
max_tokens = 123
"""


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_embedded_pool_is_valid_and_has_three_experts_over_two_models():
    cfg = load_config()
    assert len(cfg.roles.experts) >= 3
    weights = {cfg.models[m].embedded for m in cfg.roles.experts}
    assert weights == {"smollm2-135m-instruct", "gemma3-270m"}
    shared = [m for m in cfg.roles.experts if cfg.models[m].embedded == "smollm2-135m-instruct"]
    assert len(shared) == 2 and all("SmolLM2" in cfg.models[m].description for m in shared)
    assert "same" in cfg.models["smollm2-focused"].description.lower()


def test_good_config_loads_and_resolves_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.k == 2 and cfg.seed == 7
    assert cfg.models["local"].model_path == tmp_path / "weights" / "m.gguf"
    assert cfg.models["hosted"].base_url == "https://api.example.com/v1"
    assert cfg.sampling.expert.max_tokens == 123


def test_model_sampling_overlays_role_sampling_with_is_not_none(tmp_path):
    from symoe_agents.agents import build_agent

    cfg = load_config(write(tmp_path, GOOD))
    agent = build_agent(cfg, "aggregator", "hosted")
    assert agent.sampling.temperature == 0.0  # 0.0 is a value, not "unset"
    assert agent.sampling.max_tokens == 4096
    assert build_agent(cfg, "expert", "local").sampling.max_tokens == 123


@pytest.mark.parametrize(
    "mutation, key, fragment",
    [
        (("k = 2", "k = 0"), "k", "greater than or equal to 1"),
        (('mem_fraction_static = 0.8', 'mem_fraction_static = 0.8\nmem_fraction = 1'), "models.gpu.mem_fraction", "Extra inputs are not permitted"),
        (('backend = "openai"', 'backend = "ollama"'), "models.hosted", "backend"),
        (('experts = ["local", "gpu"]', 'experts = ["local", "gpt"]'), "", "roles.experts[1]: unknown model 'gpt'"),
        (('api_key_env = "EXAMPLE_API_KEY"', 'api_key_env = "sk-123-secret"'), "models.hosted.api_key_env", "NAME of an environment variable"),
        (('max_tokens = 123', 'max_tokens = 123\ntemprature = 0.5'), "sampling.expert.temprature", "Extra inputs"),
        (('model_path = "weights/m.gguf"', 'embedded = "nope"'), "models.local.embedded", "smollm2-135m-instruct"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, mutation, key, fragment):
    old, new = mutation
    assert old in GOOD
    p = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg
    assert fragment in msg
    if key:
        assert f"{p}: {key}" in msg


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "k = = 1"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "none.toml")


def test_llamacpp_needs_exactly_one_weight_source(tmp_path):
    bad = GOOD.replace('model_path = "weights/m.gguf"', 'model_path = "w.gguf"\nembedded = "gemma3-270m"')
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(write(tmp_path, bad))


def test_overrides_are_validated():
    cfg = load_config()
    assert cfg.with_overrides(k=5, seed=None).k == 5
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="k\n  Input should be greater than or equal to 1"):
        cfg.with_overrides(k=0)


def test_built_in_defaults_follow_the_method(tmp_path):
    """method.md section 5: temperature 0.7 and 4096 tokens for every role; the aggregator
    is always asked and its failures are not hidden."""
    from symoe_agents.config import RoleSampling

    roles = RoleSampling()
    for role in (roles.skill_inferencer, roles.expert, roles.aggregator):
        assert (role.temperature, role.max_tokens) == (0.7, 4096)
    assert roles.skill_inferencer.samples == 5
    cfg = load_config(write(tmp_path, GOOD))
    assert (cfg.aggregate, cfg.fallback) == ("always", "none")


def test_the_printed_pool_runs_from_any_folder(tmp_path, monkeypatch):
    """`symoe config > my.toml` saved elsewhere loads the same files as the built-in pool."""
    from typer.testing import CliRunner

    from symoe_agents.cli import app
    from symoe_agents.config import embedded_config_text

    printed = CliRunner().invoke(app, ["config"])
    assert printed.exit_code == 0 and printed.output == embedded_config_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = elsewhere / "my.toml"
    copy.write_text(printed.output)
    monkeypatch.chdir(tmp_path)  # neither the package's folder nor the copy's
    builtin, loaded = load_config(), load_config(copy)
    assert loaded.profiles is not None and loaded.profiles.is_dir()
    assert loaded.profiles == builtin.profiles and loaded.prompts_dir == builtin.prompts_dir
    assert loaded.model_dump() == builtin.model_dump()  # every path (and everything else) resolved alike
    shown = CliRunner().invoke(app, ["config", "--config", str(copy)])
    assert shown.exit_code == 0 and shown.output.startswith(f"{copy}: ok")
