"""The command line's help shows what it promises (typer renders [...] as markup and drops it)."""

import os
import subprocess

import pytest

from conftest import symoe_cmd


@pytest.mark.parametrize(
    "command, shown",
    [
        (["solve"], ["INPUT_STEM.answers.jsonl", "suffix .cache.sqlite", "--fresh", "--skip-invalid", "--retry-failed"]),
        (["eval"], ["(default: the built-in pool)", "--cache"]),
        (["servers", "up"], ["every model the roles use"]),
        (["serve"], ["--api-key-env", "--window-s", "--max-wait-s", "--max-queue", "--idle-release-s", "'symoe'", "'self-moa'"]),
    ],
)
def test_help_shows_defaults_and_options(command, shown):
    out = subprocess.run([*symoe_cmd(), *command, "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "200", "TERM": "dumb"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    for text in shown:
        assert text in out.stdout, text
