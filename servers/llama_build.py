"""Build llama.cpp's ``llama-server`` for this machine, from the package registry alone.

    python -m symoe_agents.servers.llama_build [--dest DIR] [--jobs N] [--force]

The embedded CPU pool runs llama.cpp's own server, which batches concurrent requests; PyPI
has no trustworthy prebuilt one, but llama-cpp-python's sdist vendors llama.cpp's sources.
This downloads that sdist (pinned, so the server's flags and chat templates are the ones
symoe was tested with), builds only the ``llama-server`` target with the CPU features of this
machine (``GGML_NATIVE``), without the web UI (which would be downloaded from Hugging Face),
curl or OpenSSL, and installs the static binary beside this Python (``.venv/bin``), where
symoe looks first. About 4-5 minutes on 2 cores; needs cmake and a C++ compiler. The binary
is kept in the user's cache (``~/.cache/symoe``), keyed by the source and this CPU's
features, so a second virtual environment on the same machine copies it in seconds.

Standard library only: ``make setup`` runs it from the source tree while pip installs the
rest, before the package itself is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

#: the llama-cpp-python sdist whose vendored llama.cpp is built (llama.cpp commit 0c1e570)
SOURCE = "llama-cpp-python==0.3.36"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",  # this machine's instructions (AVX-512 where present): the binary suits this host
    "-DBUILD_SHARED_LIBS=OFF",  # one static file to copy
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # otherwise the UI is fetched from Hugging Face at configure time
    "-DLLAMA_OPENSSL=OFF",
]
STAMP = "llama-server.source"


class BuildError(Exception):
    pass


def _cores() -> int:
    # servers/cpu.py has the same rule (available_cores), but importing it would import the
    # package's config, which is not installed yet when make setup runs this
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _cpu_id() -> str:
    """What a GGML_NATIVE binary depends on: the architecture and the CPU's feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()}|{flags}".encode()).hexdigest()[:12]


def cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "symoe" / "llama-server" / f"{SOURCE.replace('==', '-')}-{_cpu_id()}" / "llama-server"


def _install(binary: Path, dest: Path) -> Path:
    """Copy ``binary`` to ``dest/llama-server`` atomically: a half-copied binary is never run."""
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / f".llama-server.{os.getpid()}.part"
    try:
        shutil.copy2(binary, part)
        part.chmod(0o755)
        os.replace(part, dest / "llama-server")
    finally:
        part.unlink(missing_ok=True)
    return dest / "llama-server"


def _tool(name: str) -> str | None:
    """A build tool on PATH or beside this python (``pip install cmake ninja`` puts them there)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which(name)


def _run(argv: list[str], log: Path, what: str) -> None:
    with log.open("ab") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        lines = log.read_text(errors="replace").splitlines()[-25:]
        raise BuildError(f"{what} failed (exit {done.returncode}); the end of its log:\n" + "\n".join(lines))


def _extract_llama_cpp(archive: Path, into: Path) -> Path:
    """Only the vendored llama.cpp tree, never outside ``into`` (tarfile's 'data' filter
    where this Python has it, 3.11.4+; otherwise plain files and folders with safe names)."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        if not members:
            raise BuildError(f"{archive.name} has no vendor/llama.cpp folder")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, members=members, filter="data")
        else:
            unsafe = [m.name for m in members if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir())]
            if unsafe:
                raise BuildError(f"{archive.name} has unsafe entries, e.g. {unsafe[0]}")
            tar.extractall(into, members=members)
    (src,) = into.glob("*/vendor/llama.cpp")
    return src


def build(dest: Path, jobs: int, force: bool = False) -> Path:
    target = dest / "llama-server"
    stamp = dest / STAMP
    made_for = f"{SOURCE} cpu {_cpu_id()}"  # a GGML_NATIVE binary suits only this CPU's features
    if not force and target.is_file() and stamp.is_file() and stamp.read_text().strip() == made_for:
        print(f"llama-server from {SOURCE} is already at {target} (--force rebuilds it)", flush=True)
        return target
    cached = cache_path()
    if not force and cached.is_file():
        _install(cached, dest)
        stamp.write_text(made_for + "\n")
        print(f"llama-server from {SOURCE}: copied the build cached at {cached}", flush=True)
        return target
    cmake = _tool("cmake")
    if cmake is None:
        raise BuildError("cmake not found; install it (apt install cmake, or pip install cmake ninja) and run again")
    if shutil.which("c++") is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        raise BuildError("no C++ compiler found; install one (apt install g++) and run again")
    ninja = _tool("ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="symoe-llama-build-") as tmp:
        work = Path(tmp)
        log = work / "build.log"
        print(f"llama-server: downloading the {SOURCE} sources ...", flush=True)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps", SOURCE, "-d", str(work / "sdist")], log, "pip download")
        (archive,) = (work / "sdist").glob("*.tar.gz")
        src = _extract_llama_cpp(archive, work / "src")
        print(f"llama-server: building with {jobs} job(s) (about 5 minutes on 2 cores) ...", flush=True)
        _run([cmake, "-S", str(src), "-B", str(work / "build"), *generator, *CMAKE_FLAGS], log, "cmake configure")
        _run([cmake, "--build", str(work / "build"), "-j", str(jobs), "--target", "llama-server"], log, "cmake build")
        built = work / "build" / "bin" / "llama-server"
        if not built.is_file():
            raise BuildError(f"the build finished but {built} is missing; see {log}")
        _install(built, dest)
        stamp.write_text(made_for + "\n")
        try:
            _install(built, cached.parent)
        except OSError as exc:  # a read-only home is no reason to fail the build
            print(f"llama-server: not cached ({exc})", flush=True)
    print(f"llama-server: installed {target} in {time.monotonic() - began:.0f} s", flush=True)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m symoe_agents.servers.llama_build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=Path(sys.executable).parent, help="folder to install into (default: beside this python)")
    ap.add_argument("--jobs", type=int, default=_cores(), help="parallel compile jobs (default: the cores)")
    ap.add_argument("--force", action="store_true", help="rebuild even if this source's binary is installed or cached")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    try:
        build(args.dest, args.jobs, args.force)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; a llama-server already in place is unchanged", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
