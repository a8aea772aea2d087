"""Run configuration: one TOML file, validated by pydantic models with ``extra="forbid"``.

Why this shape:
- A *model* is a server identity (backend + weights + launch options) plus optional sampling
  overrides. Two model names may share the same weights with different sampling: they then
  share one server process, and the planner never loads those weights twice in a row.
- *Roles* name models: the skill inferencer, the expert pool and the aggregator.
- Sampling is set per role and overlaid by the model's own overrides with ``is not None``
  (``temperature = 0.0`` is a value, not "unset").
- Relative paths are resolved against the config file's folder, so a config can travel
  with its models and profiles.

Every validation problem is reported as ``FILE: dotted.key: message``.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .alignment import AlignmentConfig
from .errors import ConfigError

EMBEDDED_CONFIG_NAME = "<built-in embedded pool>"

EmbeddedModel = Literal["smollm2-135m-instruct", "gemma3-270m"]
#: what a question's final answer is when the aggregator fails or does not parse
Fallback = Literal["none", "expert-majority"]
#: when the aggregator is asked: always (the paper), or only when the k experts disagree
AggregateWhen = Literal["always", "on-disagreement"]
BACKENDS = ("llamacpp", "sglang", "vllm", "command", "openai")
#: the llama.cpp servers the ``llamacpp`` backend can run
LlamaServerKind = Literal["llama-server", "llama-cpp-python"]
#: llama-server's slots unless set: 8 reach 88-97% of the CPU engine's batch limit (docs/performance.md)
DEFAULT_SLOTS = 8
#: requests one group may hold open to one server at most (each is a socket)
MAX_IN_FLIGHT = 4096
MAX_SAMPLES_PER_REQUEST = 128


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sampling(_Strict):
    """Sampling settings. ``None`` means "inherit" (role -> model overlay)."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)

    def overlay(self, other: "Sampling") -> "Sampling":
        """Values of ``other`` win where they are set."""
        merged = self.model_dump()
        merged.update({k: v for k, v in other.model_dump().items() if v is not None})
        return Sampling(**merged)


class SkillSampling(Sampling):
    """The skill inferencer also takes several samples per question (method.md section 1)."""

    samples: int = Field(default=5, ge=1)


class Price(_Strict):
    """What a model's calls cost, in USD: tokens for a hosted model, device time for a local one."""

    input_per_mtok: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="hosted: USD per million prompt tokens")
    output_per_mtok: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="hosted: USD per million completion tokens")
    device_hour: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="local: USD per hour of the model's device; default: cost.device_hour")


class _ModelBase(_Strict):
    description: str = ""
    sampling: Sampling = Sampling()
    price: Price = Price()
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        le=MAX_IN_FLIGHT,
        description="sequences open at once to this model (a request of n samples counts n); default: "
        "concurrency.max_in_flight, else the backend's "
        "(the whole group, up to 1024, for continuous-batching servers; the slots for llama-server; 4 for servers "
        "that answer one at a time; 8 for hosted APIs)",
    )
    samples_per_request: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SAMPLES_PER_REQUEST,
        description="samples of one prompt asked in one request (the OpenAI 'n'), so the prompt is processed "
        "once; default: llama-server's slots, 1 (off) for every other backend",
    )


class _LocalModel(_ModelBase):
    """A model symoe starts and stops itself."""

    memory_gib: float | None = Field(
        default=None,
        gt=0,
        description="memory the server holds (GPU memory for GPU backends, RAM for llamacpp); "
        "plans co-residency and overlap",
    )
    start_timeout_s: float | None = Field(default=None, gt=0, description="default: servers.start_timeout_s")

    @field_validator("price")
    @classmethod
    def _device_priced(cls, v: Price) -> Price:
        if v.input_per_mtok is not None or v.output_per_mtok is not None:
            raise ValueError("a local model costs device time, not tokens: set price.device_hour (USD per hour of its device) instead")
        return v

    def gpus_needed(self) -> int:
        return 0


_PLACEHOLDERS = {"host", "port", "model", "api_key"}


class LlamaCppModel(_LocalModel):
    """A GGUF model on a local llama.cpp server (the embedded CPU default).

    ``server = "llama-server"`` (default) runs llama.cpp's own server, which batches the
    requests of its ``parallel`` slots continuously; ``"llama-cpp-python"`` runs
    llama-cpp-python's server, which answers one request at a time (``pip install
    "symoe-agents[llama-cpp-python]"``).
    """

    backend: Literal["llamacpp"]
    model_path: Path | None = None
    embedded: EmbeddedModel | None = None
    server: LlamaServerKind = "llama-server"
    executable: str | None = Field(
        default=None,
        description="llama-server: the binary; default: the one beside symoe's python (make setup builds it), else PATH",
    )
    parallel: int | None = Field(default=None, ge=1, le=256, description="llama-server: slots decoded together (default 8)")
    n_ctx: int = Field(default=4096, ge=256, description="context per request (llama-server: per slot)")
    chat_format: str | None = Field(
        default=None,
        description="a built-in chat template for a GGUF without one (llama-server: --chat-template with jinja off)",
    )
    n_threads: int | None = Field(default=None, ge=1, description="default: the cores divided by the servers that run at once")
    dequantize: Literal["auto", "bf16", "f16", "f32"] | None = Field(
        default=None,
        description="serve a copy of the GGUF with its quantized tensors expanded to this type, made once "
        "in ~/.cache/symoe/gguf ('auto': BF16 on a CPU with native BF16 (AVX512_BF16), else no copy): there "
        "a small Q4_1 model processes prompts 3x faster expanded",
    )
    python: str | None = Field(default=None, description="llama-cpp-python: the python executable; default: symoe's own")
    extra_args: list[str] = []

    @model_validator(mode="after")
    def _one_source(self) -> "LlamaCppModel":
        if (self.model_path is None) == (self.embedded is None):
            raise ValueError("set exactly one of 'model_path' (a .gguf file) or 'embedded'")
        if self.server == "llama-server" and self.python is not None:
            raise ValueError("'python' applies to server = 'llama-cpp-python'; for llama-server set 'executable'")
        if self.server == "llama-cpp-python" and (self.executable is not None or self.parallel is not None):
            raise ValueError("'executable' and 'parallel' apply to server = 'llama-server' (llama-cpp-python answers one request at a time)")
        n = self.samples_per_request
        if n is not None and n > self.slots:
            if self.server == "llama-cpp-python":
                raise ValueError("samples_per_request above 1 needs server = 'llama-server' (llama-cpp-python answers one sample per request)")
            raise ValueError(f"samples_per_request ({n}) is more than the server's slots ({self.slots}): llama-server refuses n above its slots; raise 'parallel' or lower it")
        return self

    @property
    def slots(self) -> int:
        """Requests the server decodes together: llama-server's slots, 1 for llama-cpp-python."""
        return (self.parallel or DEFAULT_SLOTS) if self.server == "llama-server" else 1


class SGLangModel(_LocalModel):
    """An SGLang server, launched from its own Python environment (it pins torch and openai)."""

    backend: Literal["sglang"]
    model_path: str
    served_model_name: str | None = None
    python: str = Field(default="python", description="python of the environment SGLang is installed in")
    launcher: Literal["module", "serve"] = "module"
    command: list[str] | None = Field(
        default=None,
        description="replaces the launcher entirely, e.g. ['conda', 'run', '-n', 'sglang', 'sglang', 'serve']",
    )
    enable_memory_saver: bool = Field(default=False, description="allows sleep (release/resume memory) instead of kill")
    enable_weights_cpu_backup: bool = False
    enable_metrics: bool = False
    context_length: int | None = Field(default=None, ge=1)
    mem_fraction_static: float | None = Field(default=None, gt=0.0, le=1.0)
    tp_size: int = Field(default=1, ge=1)
    dp_size: int = Field(default=1, ge=1)
    max_total_tokens: int | None = Field(default=None, ge=1)
    base_gpu_id: int | None = Field(default=None, ge=0)
    random_seed: int | None = None
    log_level: str | None = None
    extra_args: list[str] = []
    start_timeout_s: float | None = Field(default=600.0, gt=0)

    def gpus_needed(self) -> int:
        return self.tp_size * self.dp_size


class VLLMModel(_LocalModel):
    """A vLLM server (``vllm serve``), from its own environment."""

    backend: Literal["vllm"]
    model_path: str
    served_model_name: str | None = None
    command: list[str] = Field(default=["vllm", "serve"], description="how to launch it, before the model path")
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    seed: int | None = None
    enable_sleep_mode: bool = Field(default=False, description="allows sleep (/sleep, /wake_up) instead of kill")
    extra_args: list[str] = []
    start_timeout_s: float | None = Field(default=600.0, gt=0)

    def gpus_needed(self) -> int:
        return self.tensor_parallel_size


class CommandModel(_LocalModel):
    """Any OpenAI-compatible server, from a command template.

    Placeholders in ``command``: {host}, {port}, {model} (= served_model_name), {api_key}.
    Literal braces are doubled. Readiness: GET ``health_path`` answers a status in
    ``ready_status`` (and, with ``require_model_listed``, /v1/models lists the model).
    """

    backend: Literal["command"]
    command: list[str] = Field(min_length=1)
    served_model_name: str
    continuous_batching: bool = Field(
        default=False, description="the server batches concurrent requests: send it the whole group (up to max_in_flight)"
    )
    health_path: str = "/health"
    ready_status: list[int] = [200]
    require_model_listed: bool = False
    send_api_key: bool = Field(default=True, description="send the run key as a Bearer token to health checks and calls")
    env: dict[str, str] = {}
    gpus: int = Field(default=0, ge=0, description="GPUs the server uses (0: CPU only)")
    start_timeout_s: float | None = Field(default=600.0, gt=0)

    @field_validator("command")
    @classmethod
    def _placeholders(cls, v: list[str]) -> list[str]:
        import string

        used: set[str] = set()
        for arg in v:
            try:
                used |= {f for _, f, _, _ in string.Formatter().parse(arg) if f is not None}
            except ValueError as exc:
                raise ValueError(f"bad template {arg!r} ({exc}); double literal braces") from None
        unknown = used - _PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; use {sorted(_PLACEHOLDERS)}")
        if "port" not in used:
            raise ValueError("the command must place the server on {port} (symoe picks a free port)")
        return v

    @field_validator("health_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    def gpus_needed(self) -> int:
        return self.gpus


class OpenAIModel(_ModelBase):
    """A hosted OpenAI-compatible endpoint: no lifecycle, the key comes from an env variable."""

    backend: Literal["openai"]
    base_url: str
    model: str
    api_key_env: str | None = Field(
        default=None, description="name of the environment variable holding the key; None for keyless endpoints"
    )

    @field_validator("price")
    @classmethod
    def _token_priced(cls, v: Price) -> Price:
        if v.device_hour is not None:
            raise ValueError("a hosted model costs tokens, not device time: set price.input_per_mtok and price.output_per_mtok instead")
        return v

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or not v.replace("_", "").isalnum() or v[0].isdigit()):
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits, _), never the key itself"
            )
        return v


ModelConfig = Annotated[
    Union[LlamaCppModel, SGLangModel, VLLMModel, CommandModel, OpenAIModel], Field(discriminator="backend")
]
LocalModel = LlamaCppModel | SGLangModel | VLLMModel | CommandModel
AnyModel = LocalModel | OpenAIModel


class Roles(_Strict):
    skill_inferencer: str
    experts: list[str] = Field(min_length=1)
    aggregator: str


class RoleSampling(_Strict):
    """method.md section 5: temperature 0.7 and 4096 tokens for every role (reasoning
    models that think in ``<think>`` blocks need 32768: set it per model)."""

    skill_inferencer: SkillSampling = SkillSampling(temperature=0.7, max_tokens=4096)
    expert: Sampling = Sampling(temperature=0.7, max_tokens=4096)
    aggregator: Sampling = Sampling(temperature=0.7, max_tokens=4096)


class Concurrency(_Strict):
    """Bounds on what is sent to one server at a time."""

    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        le=MAX_IN_FLIGHT,
        description="sequences open at once per group (a request of n samples counts n), for every model "
        "without its own max_in_flight; "
        "default: per backend (see in_flight_limit)",
    )
    requests_per_second: float | None = Field(default=None, gt=0, description="rate limit per group")
    request_timeout_s: float = Field(
        default=600.0, gt=0, description="per attempt, from sending: includes the time a request waits in the server's queue"
    )
    retries: int = Field(default=3, ge=0, description="extra attempts on transient errors")


#: sequences in flight per group for servers that batch continuously (SGLang, vLLM, command
#: servers that say so): the whole group, up to this many. The server's own scheduler bounds
#: what decodes at once; the rest waits in its queue, where waiting costs nothing.
BATCHING_IN_FLIGHT = 1024
#: for servers that answer one request at a time: one decoding, a few ready behind it
SERIAL_IN_FLIGHT = 4
#: for hosted APIs, whose rate limits are the account's
HOSTED_IN_FLIGHT = 8


def batches_requests(model: "AnyModel") -> bool:
    """Whether the model's server decodes concurrent requests together (continuous batching)."""
    if isinstance(model, LlamaCppModel):
        return model.server == "llama-server"
    if isinstance(model, CommandModel):
        return model.continuous_batching
    return isinstance(model, SGLangModel | VLLMModel)


def samples_per_request(model: "AnyModel") -> int:
    """How many samples of one prompt go in one request (``n``). On by default only where it
    was measured: llama-server copies the processed prompt into the other slots, where
    samples sent apart each process it again or wait for the slot that holds it."""
    if model.samples_per_request is not None:
        return model.samples_per_request
    if isinstance(model, LlamaCppModel) and model.server == "llama-server":
        return model.slots  # llama-server refuses n above its slots
    return 1


def uses_cpu(model: "AnyModel") -> bool:
    """Whether the model's server computes on this machine's CPU."""
    return isinstance(model, LlamaCppModel) or (isinstance(model, CommandModel) and model.gpus == 0)


def prompt_cache_slots(model: "AnyModel") -> int | None:
    """The slots of a server that reuses a prompt only in the slot that processed it
    (llama-server), so the samples of one prompt are best sent in turns (see ``dispatch``);
    None for every other server."""
    return model.slots if isinstance(model, LlamaCppModel) and model.server == "llama-server" else None


def in_flight_limit(model: "AnyModel", concurrency: Concurrency) -> int:
    """Sequences one group keeps open to ``model``'s server: the model's own setting, else the
    run's, else the backend's default."""
    if model.max_in_flight is not None:
        return model.max_in_flight
    if concurrency.max_in_flight is not None:
        return concurrency.max_in_flight
    if isinstance(model, LlamaCppModel):
        return model.slots if model.server == "llama-server" else SERIAL_IN_FLIGHT
    if isinstance(model, OpenAIModel):
        return HOSTED_IN_FLIGHT
    return BATCHING_IN_FLIGHT if batches_requests(model) else SERIAL_IN_FLIGHT


class ServerSettings(_Strict):
    start_timeout_s: float = Field(default=120.0, gt=0)
    stop_grace_s: float = Field(default=15.0, ge=0)
    release_timeout_s: float = Field(
        default=120.0, gt=0, description="how long to wait for a stopped server's port and GPU memory to be free"
    )
    restart_attempts: int = Field(default=2, ge=0, description="restarts of a server that dies or hangs mid-group")
    log_dir: Path | None = Field(default=None, description="server logs; default: a temporary folder per run")


class ScheduleOptions(_Strict):
    """Planner options beyond the paper's one-model-at-a-time schedule (all off by default)."""

    co_residency: bool = Field(default=False, description="run expert groups side by side when their memory fits")
    overlap: bool = Field(default=False, description="start the next server while the last requests decode, if memory allows")
    sleep: bool = Field(default=False, description="sleep instead of kill a server used again later, where supported")
    gpus: list[int] | None = Field(default=None, description="GPU ids to use; default: all that nvidia-smi lists")
    device_memory_gib: float | None = Field(
        default=None, gt=0, description="memory per device for planning; default: measured (GPU total, or free RAM)"
    )


class ServeOptions(_Strict):
    """``symoe serve``: live requests are gathered into windows, each run as one grouped
    schedule; the windows in flight take turns on the device (``turns``)."""

    window_s: float = Field(default=0.25, ge=0, description="a window gathers requests this long after its first one arrives")
    max_window: int = Field(default=64, ge=1, description="requests per window, at most (the queue's oldest first)")
    max_windows: int = Field(default=4, ge=1, description="windows in flight at once; later requests wait in the queue")
    max_queue: int = Field(default=256, ge=1, description="requests waiting for a window, at most; beyond it: 429 with Retry-After")
    max_wait_s: float = Field(
        default=10.0, ge=0,
        description="a group waiting this long for its model stops others from joining the loaded model (no starvation)",
    )  # fmt: skip
    idle_release_s: float = Field(default=300.0, gt=0, description="a model server unused this long is stopped")
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="on SIGTERM, how long the windows in flight may finish")


class ClusterOptions(_Strict):
    """Groups placed on the nodes of a Ray cluster (``cluster.py``). Nodes join with Ray's own
    ``ray start --address=HEAD:6379 --resources='{"symoe": 1}'``; the driver (this process)
    runs on a node of the cluster, and keeps the cache, the answers and the events."""

    address: str = Field(description='"auto" (the cluster this machine belongs to) or "HOST:PORT" of its head')
    lane_resource: str = Field(default="symoe", min_length=1, description="the custom resource that marks a node for symoe's servers")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError('cluster.address is empty: use "auto" or the head\'s "HOST:6379"')
        if v.startswith("ray://"):
            raise ValueError(
                f"cluster.address {v!r} is a Ray Client address, which cannot carry the streamed answers symoe needs "
                "(Ray's streaming generators do not work over Ray Client): run symoe on a node of the cluster with 'auto' or 'HOST:6379'"
            )
        if "://" in v:
            raise ValueError(f'cluster.address {v!r}: give "auto" or "HOST:PORT" (the GCS address `ray start --head` prints), not a URL')
        return v


class CostOptions(_Strict):
    """Prices that are not a model's own, and the run's budget."""

    device_hour: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="USD per device-hour for every local model without price.device_hour")
    max_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="stop the run cleanly once its calls have cost this much (--max-cost)")


class TelemetryOptions(_Strict):
    """Traces and metrics out of the command line (telemetry.py, tracing_setup.py)."""

    traces: Literal["otlp", "console"] | None = Field(
        default=None, description="export traces: OTLP over HTTP, or to stdout; unset: as OTEL_TRACES_EXPORTER or an OTLP endpoint variable say, else off"
    )
    endpoint: str | None = Field(default=None, description="the OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (default: OTEL_EXPORTER_OTLP_ENDPOINT)")
    service_name: str = Field(default="symoe", min_length=1, description="the traces' service.name (OTEL_SERVICE_NAME wins)")

    @field_validator("endpoint")
    @classmethod
    def _http_endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (the collector's OTLP/HTTP port, usually 4318)")
        return v


class Config(_Strict):
    """A whole run's configuration."""

    k: int = Field(default=3, ge=1)
    seed: int = 0
    min_share: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="paper's rule: experts picked for fewer than this share of the batch are replaced",
    )
    aggregate: AggregateWhen = Field(
        default="always",
        description="'on-disagreement': skip the aggregator for a question whose k experts gave the same parsable answer",
    )
    fallback: Fallback = Field(
        default="none",
        description="'expert-majority': when the aggregator fails or does not parse, take the experts' majority "
        "(the record says so); 'none' (the method): no answer, scored wrong",
    )
    explain: bool = Field(default=False, description="every record explains its routing (keywords, alignment, S, gamma, probabilities, draws)")
    profiles: Path | None = None
    prompts_dir: Path | None = None
    models: dict[str, ModelConfig]
    roles: Roles
    sampling: RoleSampling = RoleSampling()
    concurrency: Concurrency = Concurrency()
    servers: ServerSettings = ServerSettings()
    schedule: ScheduleOptions = ScheduleOptions()
    alignment: AlignmentConfig = AlignmentConfig()
    serve: ServeOptions = ServeOptions()
    cluster: ClusterOptions | None = None  # None: one machine, and ray is never imported
    cost: CostOptions = CostOptions()
    telemetry: TelemetryOptions = TelemetryOptions()

    @model_validator(mode="after")
    def _roles_exist(self) -> "Config":
        declared = ", ".join(sorted(self.models)) or "(none)"
        problems: list[str] = []
        for key, name in [("roles.skill_inferencer", self.roles.skill_inferencer), ("roles.aggregator", self.roles.aggregator)]:
            if name not in self.models:
                problems.append(f"{key}: unknown model '{name}'; declared models: {declared}")
        for i, name in enumerate(self.roles.experts):
            if name not in self.models:
                problems.append(f"roles.experts[{i}]: unknown model '{name}'; declared models: {declared}")
        if len(set(self.roles.experts)) != len(self.roles.experts):
            problems.append("roles.experts: lists a model twice; list each expert once")
        if self.cost.max_usd is not None and not problems and not self.priced():
            problems.append("cost.max_usd (--max-cost): no model of a role has a price above 0, so no budget can be spent; set "
                            "models.NAME.price (input_per_mtok/output_per_mtok for hosted, device_hour for local) or cost.device_hour")  # fmt: skip
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model(self, name: str) -> AnyModel:
        return self.models[name]

    def price(self, name: str) -> Price:
        """Model ``name``'s price, a local model's device-hour defaulting to ``cost.device_hour``."""
        model = self.models[name]
        if isinstance(model, OpenAIModel) or model.price.device_hour is not None:
            return model.price
        return Price(device_hour=self.cost.device_hour)

    def priced(self) -> bool:
        """Some call of a role's model costs money (a budget can be spent)."""
        for name in {self.roles.skill_inferencer, self.roles.aggregator, *self.roles.experts}:
            price = self.price(name)
            if price.input_per_mtok or price.output_per_mtok or price.device_hour:
                return True
        return False

    def in_flight(self, name: str) -> int:
        """Sequences one group keeps open to model ``name`` (see ``in_flight_limit``)."""
        return in_flight_limit(self.models[name], self.concurrency)

    def with_overrides(self, **changes: Any) -> "Config":
        """A copy with top-level fields replaced (CLI flags such as --k, --seed), re-validated."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        return Config.model_validate(data)

    def with_budget(self, max_usd: float | None, source: str = "--max-cost") -> "Config":
        """A copy whose run stops once its calls cost ``max_usd`` (None: as configured);
        a budget nothing can spend is a ``ConfigError``."""
        if max_usd is None:
            return self
        data = self.model_dump()
        data["cost"]["max_usd"] = max_usd
        return parse_config(data, source)

    def secret_env_names(self) -> set[str]:
        """The environment variables this config reads keys from (hosted models, alignment)."""
        names = {m.api_key_env for m in self.models.values() if isinstance(m, OpenAIModel) and m.api_key_env}
        if self.alignment.api_key_env:
            names.add(self.alignment.api_key_env)
        return names

    def without_profiles(self) -> "Config":
        """The same run with uniform random recruiting (and the configured aggregator)."""
        return self.model_copy(update={"profiles": None})


def _format_loc_clean(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union tag right after the model name: models.<name>.<tag>.<field>
    cleaned = list(loc)
    if len(cleaned) >= 3 and cleaned[0] == "models" and cleaned[2] in BACKENDS:
        del cleaned[2]
    out = ""
    for item in cleaned:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            out += ("." if out else "") + str(item)
    return out


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative paths in the raw TOML relative to the config file's folder."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(base / value)
        return value

    for key in ("profiles", "prompts_dir"):
        if key in data:
            data[key] = fix(data[key])
    if isinstance(data.get("servers"), dict) and "log_dir" in data["servers"]:
        data["servers"]["log_dir"] = fix(data["servers"]["log_dir"])
    for model in (data.get("models") or {}).values():
        if isinstance(model, dict) and model.get("backend") == "llamacpp" and "model_path" in model:
            model["model_path"] = fix(model["model_path"])
    return data


def parse_config(data: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append((_format_loc_clean(tuple(err["loc"])), msg))
        raise ConfigError(source, problems) from None


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a config file; with no path, the built-in embedded CPU pool."""
    if path is None:
        data_dir = files("symoe_agents").joinpath("data")
        text = data_dir.joinpath("embedded.toml").read_text(encoding="utf-8")
        return parse_config(_resolve_paths(tomllib.loads(text), Path(str(data_dir))), EMBEDDED_CONFIG_NAME)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [("", "file not found; pass an existing TOML file to --config")])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [("", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [("", f"not valid TOML: {exc}")]) from None
    return parse_config(_resolve_paths(data, path.resolve().parent), str(path))


#: a top-level ``key = "value"`` line of a path key that ``_resolve_paths`` resolves
_PATH_LINE = re.compile(r'^(\s*(?:profiles|prompts_dir|model_path|log_dir)\s*=\s*)"([^"\\]*)"', re.MULTILINE)


def embedded_config_text() -> str:
    """The built-in pool's TOML, a working example of every section. Its relative paths are
    relative to the package's data folder, so they are printed absolute: a copy saved
    anywhere (``symoe config > my.toml``) loads the same files. Comments stay as written,
    which is why the text is edited rather than the TOML parsed and dumped again."""
    data_dir = Path(str(files("symoe_agents").joinpath("data")))
    text = (data_dir / "embedded.toml").read_text(encoding="utf-8")

    def absolute(m: re.Match[str]) -> str:
        if Path(m.group(2)).is_absolute():
            return m.group(0)
        return m.group(1) + json.dumps(str(data_dir / m.group(2)), ensure_ascii=False)  # a JSON string is a TOML string

    return _PATH_LINE.sub(absolute, text)
