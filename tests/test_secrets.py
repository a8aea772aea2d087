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
        return {401: f"Incorrect API key provided: {self.key}", 400: f"bad request for key {self.key}"}.get(code, "error")


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
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=600)
    assert proc.returncode == 1, stderr.decode()[-3000:]  # questions whose calls were refused have errors
    assert f"Bearer {key}" in api.auth_headers  # the key was really used
    records = read_jsonl(out_dir / "answers.jsonl")
    errors = " ".join(e for r in records for e in r["errors"])
    assert "HTTP 401" in errors and "$SYMOE_PLANTED_KEY" in errors  # the rejections are reported...
    # ...with the API's own message, and the key it echoed blanked out
    assert "Incorrect API key provided: ***" in errors and "bad request for key ***" in errors
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "c.toml"]
    assert {p.name for p in written} >= {"answers.jsonl", "answers.cache.sqlite", "events.jsonl"}
    assert any(p.parent.name == "server-logs" for p in written)
    for blob, where in [(stdout, "stdout"), (stderr, "stderr"), *((p.read_bytes(), str(p)) for p in written)]:
        assert key.encode() not in blob, f"the planted key leaked into {where}"
        assert b"sk-symoe-" not in blob, f"the local run key leaked into {where}"
