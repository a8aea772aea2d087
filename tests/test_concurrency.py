"""How many requests each model's server gets at once, and how many threads each CPU server
gets: pure decisions over the config."""

import pytest

from symoe_agents.config import (
    BATCHING_IN_FLIGHT,
    DEFAULT_SLOTS,
    HOSTED_IN_FLIGHT,
    SERIAL_IN_FLIGHT,
    ConfigError,
    parse_config,
)
from symoe_agents.servers.cpu import cpu_server_keys, cpu_servers_at_once, threads_per_server

MODELS = {
    "ls": {"backend": "llamacpp", "model_path": "/m/a.gguf"},
    "ls4": {"backend": "llamacpp", "model_path": "/m/a.gguf", "parallel": 4},
    "lcpp": {"backend": "llamacpp", "model_path": "/m/b.gguf", "server": "llama-cpp-python"},
    "sg": {"backend": "sglang", "model_path": "org/x"},
    "vl": {"backend": "vllm", "model_path": "org/y"},
    "cmd": {"backend": "command", "command": ["srv", "{port}"], "served_model_name": "c"},
    "cmdb": {"backend": "command", "command": ["srv", "{port}"], "served_model_name": "c", "continuous_batching": True},
    "api": {"backend": "openai", "base_url": "https://api.example.com/v1", "model": "gpt-x"},
}


def config(models=MODELS, **top):
    names = list(models)
    return parse_config({"models": models, "roles": {"skill_inferencer": names[0], "experts": names, "aggregator": names[0]}, **top}, "t")


def test_each_backend_has_its_default():
    cfg = config()
    assert DEFAULT_SLOTS == 8 and SERIAL_IN_FLIGHT < DEFAULT_SLOTS < BATCHING_IN_FLIGHT
    assert {n: cfg.in_flight(n) for n in MODELS} == {
        "ls": 8, "ls4": 4, "lcpp": 4, "sg": 1024, "vl": 1024, "cmd": 4, "cmdb": 1024, "api": 8,
    }  # fmt: skip
    assert HOSTED_IN_FLIGHT == 8


def test_the_models_own_limit_wins_over_the_runs_which_wins_over_the_backends():
    models = {**MODELS, "sg": {**MODELS["sg"], "max_in_flight": 3000}}
    cfg = config(models, concurrency={"max_in_flight": 16})
    assert cfg.in_flight("sg") == 3000 and cfg.in_flight("vl") == 16 and cfg.in_flight("ls") == 16


def test_llama_server_slots_and_the_context_of_each():
    from symoe_agents.servers.llamacpp import LlamaCppBackend

    cfg = config({"a": {"backend": "llamacpp", "model_path": "/m/a.gguf", "n_ctx": 2048, "parallel": 6, "chat_format": "gemma"}})
    launch = LlamaCppBackend(cfg.model("a"), threads=2).launch("127.0.0.1", 5555, "sk-secret")
    argv = launch.argv
    assert argv[argv.index("-c") + 1] == str(2048 * 6) and argv[argv.index("-np") + 1] == "6"
    assert argv[argv.index("--threads") + 1] == "2" and argv[argv.index("--threads-batch") + 1] == "2"
    # a built-in template by name needs jinja off, set before the template
    assert argv.index("--no-jinja") < argv.index("--chat-template") and argv[argv.index("--chat-template") + 1] == "gemma"
    assert launch.env == {"LLAMA_API_KEY": "sk-secret"} and "sk-secret" not in " ".join(argv)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def test_configured_threads_win_over_the_rule():
    from symoe_agents.servers.llamacpp import LlamaCppBackend

    cfg = config({"a": {"backend": "llamacpp", "model_path": "/m/a.gguf", "n_threads": 3}})
    argv = LlamaCppBackend(cfg.model("a"), threads=1).launch("127.0.0.1", 5555, "k").argv
    assert argv[argv.index("--threads") + 1] == "3"


@pytest.mark.parametrize(
    "model, field",
    [
        ({"server": "llama-server", "python": "/usr/bin/python3"}, "'python' applies to server = 'llama-cpp-python'"),
        ({"server": "llama-cpp-python", "executable": "/opt/llama-server"}, "apply to server = 'llama-server'"),
        ({"server": "llama-cpp-python", "parallel": 4}, "apply to server = 'llama-server'"),
        ({"server": "llama.cpp"}, "llama-server"),
        ({"parallel": 0}, "greater than or equal to 1"),
    ],
)
def test_llamacpp_options_of_the_other_server_are_refused(model, field):
    with pytest.raises(ConfigError) as err:
        config({"a": {"backend": "llamacpp", "model_path": "/m/a.gguf", **model}})
    assert field in str(err.value) and "models.a" in str(err.value)


def test_in_flight_limits_are_bounded():
    with pytest.raises(ConfigError, match="less than or equal to 4096"):
        config(concurrency={"max_in_flight": 5000})
    with pytest.raises(ConfigError, match="models.api.max_in_flight"):
        config({**MODELS, "api": {**MODELS["api"], "max_in_flight": 0}})


def test_threads_divide_the_cores_among_the_cpu_servers_that_run_at_once():
    cpu_only = {k: v for k, v in MODELS.items() if k in ("ls", "ls4", "lcpp", "cmd")}
    keys = cpu_server_keys(config(cpu_only), lambda name: name)
    assert keys == {"ls", "ls4", "lcpp", "cmd"}
    assert cpu_server_keys(config(), lambda name: name) == {"ls", "ls4", "lcpp", "cmd", "cmdb"}  # GPU and hosted models use no CPU server
    assert cpu_servers_at_once(config(cpu_only), 4) == 1  # the paper's one model at a time
    assert cpu_servers_at_once(config(cpu_only, schedule={"overlap": True}), 4) == 2
    assert cpu_servers_at_once(config(cpu_only, schedule={"co_residency": True}), 4) == 4
    assert cpu_servers_at_once(config(cpu_only, schedule={"co_residency": True}), 0) == 1
    # lanes on several devices (GPU slices) run side by side, a CPU server possibly in each
    assert cpu_servers_at_once(config(cpu_only), 4, devices=2) == 2 and cpu_servers_at_once(config(cpu_only), 1, devices=4) == 1
    # only the expert stage runs lanes side by side: CPU skill and aggregator servers run alone
    assert cpu_servers_at_once(config(cpu_only), 2, devices=2, n_cpu_experts=0) == 1
    assert cpu_servers_at_once(config(cpu_only), 3, devices=2, n_cpu_experts=3) == 2
    assert [threads_per_server(2, n) for n in (1, 2, 3)] == [2, 1, 1]  # never more threads than cores
    assert threads_per_server(16, 3) == 5


def test_the_manager_gives_each_llama_server_its_share(monkeypatch):
    from symoe_agents.events import EventLog
    from symoe_agents.servers import ServerManager
    from symoe_agents.servers import cpu

    monkeypatch.setattr(cpu, "available_cores", lambda: 8)
    two = {"a": {"backend": "llamacpp", "model_path": "/m/a.gguf"}, "b": {"backend": "llamacpp", "model_path": "/m/b.gguf"}}
    alone = ServerManager(config(two), EventLog(), gpu_monitor=None)
    side_by_side = ServerManager(config(two, schedule={"co_residency": True}), EventLog(), gpu_monitor=None)
    told = ServerManager(config(two), EventLog(), gpu_monitor=None, cpu_servers_at_once=4)
    assert (alone.cpu_threads, side_by_side.cpu_threads, told.cpu_threads) == (8, 4, 2)
    alone.divide_cores(devices=2)  # the controller found two GPU slices: two lanes at once
    told.divide_cores(devices=2)  # an explicit count (servers up) stands
    assert (alone.cpu_threads, told.cpu_threads) == (4, 2)
    argv = alone._backends["b"].launch("127.0.0.1", 1, "k").argv
    assert argv[argv.index("--threads") + 1] == "4"
    argv = side_by_side._backends["a"].launch("127.0.0.1", 1, "k").argv
    assert argv[argv.index("--threads") + 1] == "4"


def test_samples_go_in_one_request_only_where_it_was_measured():
    from symoe_agents.config import samples_per_request

    cfg = config()
    assert {n: samples_per_request(cfg.models[n]) for n in MODELS} == {
        "ls": 8, "ls4": 4, "lcpp": 1, "sg": 1, "vl": 1, "cmd": 1, "cmdb": 1, "api": 1,
    }  # fmt: skip
    models = {**MODELS, "vl": {**MODELS["vl"], "samples_per_request": 16}, "ls": {**MODELS["ls"], "samples_per_request": 1}}
    cfg = config(models)
    assert samples_per_request(cfg.models["vl"]) == 16 and samples_per_request(cfg.models["ls"]) == 1
    with pytest.raises(ConfigError, match="samples_per_request"):
        config({**MODELS, "vl": {**MODELS["vl"], "samples_per_request": 0}})


@pytest.mark.parametrize(
    "model, match",
    [
        ({"backend": "llamacpp", "model_path": "/m/a.gguf", "parallel": 4, "samples_per_request": 5}, "more than the server's slots"),
        ({"backend": "llamacpp", "model_path": "/m/a.gguf", "server": "llama-cpp-python", "samples_per_request": 2}, "needs server = 'llama-server'"),
    ],
)
def test_samples_per_request_a_server_would_refuse_is_a_config_error(model, match):
    with pytest.raises(ConfigError, match=match):
        config({"m": model})
