"""servers/llama_build.py without compiling: the per-user cache, the stamp, the errors.
(The compile itself runs in every `make setup`, which the test suite depends on.)"""

import os

import pytest

from symoe_agents.servers import llama_build


def test_a_cached_build_is_installed_and_stamped_then_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = llama_build.cache_path()
    assert str(cached).startswith(str(tmp_path / "cache" / "symoe" / "llama-server"))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x7fELF a built server")
    dest = tmp_path / "venv-bin"
    target = llama_build.build(dest, jobs=1)
    assert target == dest / "llama-server" and target.read_bytes() == b"\x7fELF a built server"
    assert os.access(target, os.X_OK) and not list(dest.glob("*.part"))
    stamp = (dest / llama_build.STAMP).read_text().split()
    assert stamp[0] == llama_build.SOURCE and stamp[1] == "cpu" and len(stamp[2]) == 12
    cached.write_bytes(b"another build")  # installed and stamped for this CPU: not copied again
    llama_build.build(dest, jobs=1)
    assert target.read_bytes() == b"\x7fELF a built server"
    (dest / llama_build.STAMP).write_text(llama_build.SOURCE + " cpu 000000000000\n")  # made for another CPU
    llama_build.build(dest, jobs=1)
    assert target.read_bytes() == b"another build"


def test_without_cmake_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(llama_build, "_tool", lambda name: None)
    with pytest.raises(llama_build.BuildError, match="cmake not found; install it"):
        llama_build.build(tmp_path / "bin", jobs=1)
    assert not (tmp_path / "bin" / "llama-server").exists()
    assert llama_build.main(["--dest", str(tmp_path / "bin")]) == 1
