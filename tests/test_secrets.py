"""A planted API key never appears in anything symoe writes, even when the API echoes it.

The run mixes real llama.cpp servers with a hosted role on a STAND-IN API (an HTTP server
in this test's event loop), because a real hosted API cannot be reached from here; the
stand-in answers some calls with 401 and 400 whose messages contain the key, as some
providers do.
"""

import asyncio
import os
import sys

import pytest

from conftest import EXAMPLES, read_jsonl
from standins.openai_standin import ScriptedAPI

pytestmark = pytest.mark.servers


class EchoingAPI(ScriptedAPI):
    """Error responses quote the key the client sent."""

    def __init__(self, script, key):
        super().__init__(script)
        self.key = key

    def error_message(self, code: int) -> str:
        # the 400's message puts the key across the 300th character, where symoe cuts it
        return {401: f"Incorrect API key provided: {self.key}", 400: f"bad request {'x' * 270} for key {self.key}"}.get(code, "error")


def environments_holding(secret: bytes, but: set[int]) -> dict[int, str]:
    """Processes (pid: command line) other than ``but`` whose environment holds ``secret``."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in but:
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if secret in f.read():
                    with open(f"/proc/{d}/cmdline", "rb") as c:
                        found[int(d)] = c.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


async def test_a_planted_key_is_in_no_file_symoe_writes(tmp_path):
    key = "sk-planted-" + os.urandom(12).hex()
    async with EchoingAPI([401, 200, 400, 200, 200, 401], key) as api:
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f"""k = 2
[models.smol]
backend = "llamacpp"
embedded = "smollm2-135m-instruct"
[models.remote]
backend = "openai"
base_url = "{api.base_url}"
model = "remote-model"
api_key_env = "SYMOE_PLANTED_KEY"
[roles]
skill_inferencer = "smol"
experts = ["smol", "remote"]
aggregator = "remote"
[sampling.skill_inferencer]
max_tokens = 24
samples = 2
[sampling.expert]
max_tokens = 32
[sampling.aggregator]
max_tokens = 32
[concurrency]
retries = 1
[servers]
log_dir = "{tmp_path / 'server-logs'}"
"""
        )
        out_dir = tmp_path / "run"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "symoe_agents.cli", "solve", str(EXAMPLES / "questions.jsonl"), "--config", str(cfg),
            "-o", str(out_dir / "answers.jsonl"), "--events", str(out_dir / "events.jsonl"),
            env={**os.environ, "SYMOE_PLANTED_KEY": key},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        leaked: dict[int, str] = {}

        async def watch_environments() -> None:  # every process symoe starts, while it lives
            while True:
                leaked.update(environments_holding(key.encode(), {os.getpid(), proc.pid}))
                await asyncio.sleep(0.05)

        watcher = asyncio.ensure_future(watch_environments())
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=600)
        finally:
            watcher.cancel()
    assert proc.returncode == 1, stderr.decode()[-3000:]  # questions whose calls were refused have errors
    assert f"Bearer {key}" in api.auth_headers  # the key was really used
    records = read_jsonl(out_dir / "answers.jsonl")
    errors = " ".join(e for r in records for e in r["errors"])
    assert "HTTP 401" in errors and "$SYMOE_PLANTED_KEY" in errors  # the rejections are reported...
    # ...with the API's own message, and the key it echoed blanked out
    assert "Incorrect API key provided: ***" in errors and "bad request xxx" in errors
    assert not leaked, f"a process symoe started inherited the hosted key: {leaked}"
    fragments = {key[i : i + 8].encode() for i in range(len(key) - 7)}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "c.toml"]
    assert {p.name for p in written} >= {"answers.jsonl", "answers.cache.sqlite", "events.jsonl"}
    assert any(p.parent.name == "server-logs" for p in written)
    for blob, where in [(stdout, "stdout"), (stderr, "stderr"), *((p.read_bytes(), str(p)) for p in written)]:
        assert not [f for f in fragments if f in blob], f"the planted key (or 8 characters of it) leaked into {where}"
        assert b"sk-symoe-" not in blob, f"the local run key leaked into {where}"


def test_scrub_removes_a_key_and_every_fragment_of_eight_characters_or_more():
    from symoe_agents.redaction import scrub

    key = "sk-abcdefghijklmnopqrstuvwxyz0123"
    assert scrub(f"rejected {key}.", {key}) == "rejected ***."
    # the tail a cut left, the head of a masked echo, a fragment inside other text
    assert scrub(f"cut here: {key[:20]}", {key}) == "cut here: ***"
    assert scrub(f"key ...{key[-8:]}", {key}) == "key ...***"
    assert scrub(f"x{key[5:17]}y", {key}) == "x***y"
    # seven characters of a key are ordinary text, and so is text that shares none
    assert scrub(f"seven {key[3:10]} only", {key}) == f"seven {key[3:10]} only"
    assert scrub("nothing to hide", {key}) == "nothing to hide"
    assert scrub("short key abcd here", {"abcd"}) == "short key *** here"


def test_preflight_hides_the_configs_key_variables_from_every_process_it_starts(monkeypatch):
    import subprocess

    from symoe_agents.config import parse_config
    from symoe_agents.preflight import preflight
    from symoe_agents.redaction import child_env

    monkeypatch.setenv("SYMOE_HIDDEN_TEST_KEY", "sk-hidden-0123456789")
    cfg = parse_config({"models": {"h": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "h",
                                         "api_key_env": "SYMOE_HIDDEN_TEST_KEY"}},
                        "roles": {"skill_inferencer": "h", "experts": ["h"], "aggregator": "h"}}, "test")  # fmt: skip
    preflight(cfg)
    seen = subprocess.run(["env"], capture_output=True, text=True, env=child_env()).stdout
    assert "SYMOE_HIDDEN_TEST_KEY" not in seen and "sk-hidden-0123456789" not in seen
    assert "PATH=" in seen  # the rest of the environment is there
