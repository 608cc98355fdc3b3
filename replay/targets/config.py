"""Target configuration: one YAML file per target (docs/DESIGN.md, "Target config").

A target is what a replay sends requests to; `kind` is the wire format it speaks:
- `openai`: an already running OpenAI-compatible server, self-hosted or hosted (OpenAI, Groq,
  Together, Fireworks, Vertex AI's OpenAI endpoint, a gateway), told apart by `base_url`;
- `vllm`: a vLLM server that shadowreplay starts on the local node and stops at the end;
- `anthropic`: Anthropic's Messages API (`base_url` is the API root, e.g. https://api.anthropic.com;
  options under `anthropic:`);
- `azure_openai`: Azure OpenAI (`base_url` https://RESOURCE.openai.azure.com; the deployment and
  api-version under `azure:`).
`provider` names who serves the target (for prices and reports); when `kind` is left out it follows
from a known provider (PROVIDER_KINDS).

Relative paths in a target file (tokenizer, api_key_file, vllm.model, vllm.python) are resolved
against the directory of that file, so a config means the same thing from any working directory.
`tokenizer` is a local Hugging Face tokenizer directory: one that does not exist is an error when
the file is loaded; whether it loads is checked before a run starts (replay/targets/preflight.py).
The API key is never in the file: `api_key_env` names the environment variable that holds it,
or `api_key_file` names a file whose content is the key.

Blue/green by configuration: the identity fields (ENV_FIELDS) may be written `${VAR}` or
`${VAR:-default}` and are filled in from the environment when the file is loaded, e.g.
`provider: ${MODEL_PROVIDER}`, `model: ${MODEL_ID}`, `base_url: ${INFERENCE_ENDPOINT}`,
`api_key_env: ${INFERENCE_API_KEY_VAR:-INFERENCE_API_KEY}`; swapping the candidate is then a change
of environment. A variable that is not set (and has no default) is an error naming it. The values
used, and which variable gave each, are in `public_dict()` (hence the manifest); keys never are:
interpolation is refused in every other field, so no secret can be pulled into the config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.clients.rate_limiter import RateLimits
from shadowreplay.replay.clients.retry_policy import RetryPolicy
from shadowreplay.replay.config_files import read_yaml_mapping, validation_problems
from shadowreplay.replay.secrets import KeyReadError, read_key
from shadowreplay.replay.targets.vllm_replicas import CUDA_DEVICES_ENV, parallel_size

TargetKind = Literal["openai", "vllm", "anthropic", "azure_openai"]

# The wire format of a known provider: a target with `provider` and no `kind` speaks this one.
PROVIDER_KINDS: dict[str, str] = {
    "openai": "openai",
    "groq": "openai",
    "together": "openai",
    "fireworks": "openai",
    "vertex": "openai",
    "vllm": "vllm",
    "anthropic": "anthropic",
    "azure": "azure_openai",
    "azure_openai": "azure_openai",
}

# Fields that may take their value from the environment (`${VAR}`), as dotted paths.
ENV_FIELDS: tuple[str, ...] = (
    "name",
    "kind",
    "provider",
    "model",
    "base_url",
    "api",
    "api_key_env",
    "api_key_file",
    "tokenizer",
    "price",
    "azure.deployment",
    "azure.api_version",
)
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class TargetConfigError(ShadowReplayError, ValueError):
    """A target file that cannot be read or does not validate; the message names file and field."""


class Timeouts(BaseModel):
    """Per-request limits: connecting, waiting for the first output token, and the whole request."""

    model_config = ConfigDict(extra="forbid")
    connect_s: float = Field(default=10.0, gt=0)
    first_token_s: float = Field(default=60.0, gt=0)
    total_s: float = Field(default=600.0, gt=0)


class VllmLaunch(BaseModel):
    """How to start vLLM for a `kind: vllm` target (vLLM may live in its own Python environment)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    args: list[str] = Field(default_factory=list)
    python: str | None = None  # None: $SHADOWREPLAY_VLLM_PYTHON, else this interpreter if it has vLLM
    port: int | None = Field(default=None, ge=1, le=65535)  # None: a free port
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: float = Field(default=300.0, gt=0)
    # Servers of this model started side by side, each on its own GPUs or share of CPUs
    # (replay/targets/vllm_replicas.py), balanced over as a target's endpoints are.
    replicas: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _replica_fields(self) -> VllmLaunch:
        if self.replicas > 1 and self.port is not None:
            raise ValueError("port is for one server; with replicas > 1 each replica gets a free port")
        if self.replicas > 1 and CUDA_DEVICES_ENV in self.env:
            raise ValueError(
                f"env sets {CUDA_DEVICES_ENV} for every replica; with replicas > 1 each replica gets its own "
                f"GPUs from those this process sees (set {CUDA_DEVICES_ENV} for shadowreplay itself to choose them)"
            )
        parallel_size(self.args)  # a malformed parallel size is a config error here, not at start-up
        return self


class AnthropicOptions(BaseModel):
    """Options of a `kind: anthropic` target (Messages API)."""

    model_config = ConfigDict(extra="forbid")
    version: str = "2023-06-01"  # the anthropic-version header
    beta: list[str] = Field(default_factory=list)  # anthropic-beta header values
    default_max_tokens: int = Field(default=4096, ge=1)  # for requests that set none (Anthropic requires it)
    ignore_fields: list[str] = Field(default_factory=list)  # request fields dropped instead of refused


class AzureOptions(BaseModel):
    """Options of a `kind: azure_openai` target: requests go to
    {base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}."""

    model_config = ConfigDict(extra="forbid")
    deployment: str | None = None  # None: the target's model
    api_version: str = Field(min_length=1)


class TargetConfig(BaseModel):
    """One target, validated. `source` is the file it came from (for messages), not configuration."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: TargetKind
    provider: str | None = None  # who serves it (openai, anthropic, groq, ...), for prices and reports
    price: str | None = None  # the price-book entry of this target (configs/prices.yaml), if not matched by provider
    base_url: str | None = None  # kind vllm: filled in once the server is up
    # Replicas of the same model, each its own base URL (instead of base_url, which then reads the
    # first): every worker sends each attempt to the one with the fewest of its requests in flight
    # (replay/clients/replicas.py), and each result row records which (`replica`, its index here).
    endpoints: list[str] | None = None
    # An already running server's Prometheus page (vLLM: http://host:port/metrics), scraped at 1 Hz
    # during runs as the servers shadowreplay starts are; kind vllm is scraped without it.
    metrics_url: str | None = None
    # GPUs one replica uses (the capacity plan's GPU count is replicas x this). None: for kind vllm,
    # what its args make one server use (tensor x pipeline x data parallel size), else 1.
    gpus_per_replica: int | None = Field(default=None, ge=1)
    model: str
    api: Literal["chat", "completions"] = "chat"
    api_key_env: str | None = None
    api_key_file: str | None = None
    tokenizer: str | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)
    extra_body: dict = Field(default_factory=dict)
    ignore_eos: bool | None = None  # force exact output lengths; None: on for vllm targets only
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    rate_limits: RateLimits | None = None
    vllm: VllmLaunch | None = None
    anthropic: AnthropicOptions | None = None
    azure: AzureOptions | None = None
    source: str | None = Field(default=None, exclude=True)
    _env_bindings: dict[str, str] = PrivateAttr(default_factory=dict)  # field -> variable(s) it came from

    @model_validator(mode="before")
    @classmethod
    def _kind_from_provider(cls, data):
        if isinstance(data, dict) and data.get("kind") is None and data.get("provider") is not None:
            provider = str(data["provider"])
            if provider not in PROVIDER_KINDS:
                raise ValueError(
                    f"kind is not given and provider {provider!r} is not one whose wire format is known "
                    f"({', '.join(PROVIDER_KINDS)}); set kind"
                )
            data = {**data, "kind": PROVIDER_KINDS[provider]}
        return data

    @field_validator("base_url", "metrics_url")
    @classmethod
    def _base_url_shape(cls, value: str | None) -> str | None:
        return _url_shape(value)

    @field_validator("endpoints")
    @classmethod
    def _endpoints_shape(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("needs at least one URL (or leave it out and give base_url)")
        urls = [_url_shape(url) or "" for url in value]
        if len(set(urls)) < len(urls):
            raise ValueError("lists a URL twice: each endpoint is one replica")
        return urls

    @model_validator(mode="after")
    def _kind_fields(self) -> TargetConfig:
        if self.endpoints is not None:
            if self.kind == "vllm":
                raise ValueError("endpoints are for servers already running; kind vllm starts its own")
            if self.base_url is not None and self.base_url != self.endpoints[0]:
                raise ValueError("give base_url or endpoints, not both (base_url reads the first endpoint)")
            self.base_url = self.endpoints[0]
        if self.kind == "vllm" and self.vllm is None:
            raise ValueError("kind vllm needs a `vllm:` section (model, args, python)")
        if self.kind != "vllm" and self.base_url is None:
            raise ValueError(f"kind {self.kind} needs base_url (or endpoints: one URL per replica)")
        if self.kind != "vllm" and self.vllm is not None:
            raise ValueError("a `vllm:` section is only for kind vllm")
        if self.kind == "vllm" and self.metrics_url is not None:
            raise ValueError(
                "metrics_url is for servers already running; a kind vllm server is scraped at its own /metrics"
            )
        if self.gpus_per_replica is not None and self.kind in ("anthropic", "azure_openai"):
            raise ValueError(f"gpus_per_replica is for self-hosted servers; kind {self.kind} is a hosted API")
        if self.gpus_per_replica is not None and self.vllm is not None:
            needed = parallel_size(self.vllm.args)
            if self.gpus_per_replica < needed:
                raise ValueError(
                    f"gpus_per_replica {self.gpus_per_replica} is fewer than the {needed} GPUs vllm.args make one "
                    "server use (tensor x pipeline x data parallel size)"
                )
        if self.kind != "anthropic" and self.anthropic is not None:
            raise ValueError("an `anthropic:` section is only for kind anthropic")
        if self.kind != "azure_openai" and self.azure is not None:
            raise ValueError("an `azure:` section is only for kind azure_openai")
        if self.kind == "azure_openai" and self.azure is None:
            raise ValueError("kind azure_openai needs an `azure:` section with api_version (and deployment)")
        if self.kind == "anthropic":
            if self.api != "chat":
                raise ValueError("kind anthropic takes api chat only (the Messages API)")
            if self.ignore_eos:
                raise ValueError("ignore_eos is a vLLM extension; Anthropic cannot force output lengths")
            if self.base_url and self.base_url.endswith("/v1"):
                raise ValueError(
                    "for kind anthropic, base_url is the API root without /v1 (e.g. https://api.anthropic.com)"
                )
            if self.anthropic is None:
                self.anthropic = AnthropicOptions()
        return self

    @property
    def forces_output_length(self) -> bool:
        """Whether requests carry `ignore_eos` so the server emits exactly the asked-for tokens."""
        return self.ignore_eos if self.ignore_eos is not None else self.kind == "vllm"

    def api_key(self) -> str | None:
        """The key, read at the moment of use from the environment or the key file (replay/secrets.py);
        never stored. A key that cannot be read is a TargetConfigError naming the file and the variable."""
        try:
            return read_key(self.source or self.name, env_name=self.api_key_env, key_file=self.api_key_file)
        except KeyReadError as exc:
            raise TargetConfigError(str(exc)) from None

    @property
    def env_bindings(self) -> dict[str, str]:
        """Which environment variable gave each interpolated field (dotted path -> variable names)."""
        return dict(self._env_bindings)

    @property
    def replica_count(self) -> int:
        """How many replicas the target is: its endpoints, or the servers of a kind vllm target."""
        if self.endpoints:
            return len(self.endpoints)
        return self.vllm.replicas if self.vllm is not None else 1

    @property
    def replica_gpus(self) -> int:
        """The GPUs one replica uses: gpus_per_replica, else a vllm target's parallel size, else 1."""
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        return parallel_size(self.vllm.args) if self.vllm is not None else 1

    @property
    def replica_urls(self) -> list[str]:
        """Each replica's base URL: the endpoints, or the one base_url (none while a vllm server is not up)."""
        return list(self.endpoints) if self.endpoints else [self.base_url] if self.base_url else []

    def public_dict(self) -> dict:
        """The configuration as it may be written to a manifest: names of secrets, never their values;
        the values actually used, and under `from_env` the variables that gave them."""
        public = self.model_dump(mode="json")
        if self.kind == "vllm":  # the GPUs one replica uses, as resolved (a capacity plan reads it)
            public["gpus_per_replica"] = self.replica_gpus
        if self._env_bindings:
            public["from_env"] = dict(self._env_bindings)
        return public


def _url_shape(value: str | None) -> str | None:
    """A base URL as the clients join paths to it: http(s), no trailing slash."""
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/") if value else value


def _resolve_paths(raw: dict, base: Path) -> dict:
    def resolve(value: str | None) -> str | None:
        """A local path resolved against the file's directory; a bare model id (hub name) stays."""
        if value is None:
            return None
        expanded = Path(os.path.expanduser(value))
        if expanded.is_absolute():
            return str(expanded)
        candidate = base / expanded
        if value.startswith(".") or candidate.exists():
            # Normalized, not resolved: a venv's bin/python is a symlink, and following it would
            # run the base interpreter without the venv's packages.
            return os.path.normpath(candidate)
        return value

    raw = dict(raw)
    if "tokenizer" in raw:
        raw["tokenizer"] = resolve(raw["tokenizer"])
    if "api_key_file" in raw:
        raw["api_key_file"] = resolve(raw["api_key_file"])
    if isinstance(raw.get("vllm"), dict):
        vllm = dict(raw["vllm"])
        vllm["model"] = resolve(vllm.get("model"))
        if vllm.get("python"):
            vllm["python"] = resolve(vllm["python"])
        raw["vllm"] = vllm
    return raw


def _interpolate(value: str, where: str, path: Path, used: list[str]) -> str:
    """`value` with each ${VAR} / ${VAR:-default} replaced from the environment."""

    def lookup(match: re.Match) -> str:
        variable, default = match.group(1), match.group(2)
        used.append(variable)
        found = os.environ.get(variable)
        if found:
            return found
        if default is not None:
            return default
        raise TargetConfigError(
            f"{path}: {where}: environment variable {variable} is not set (and no ${{{variable}:-default}} is given)"
        )

    result = _ENV_REFERENCE.sub(lookup, value)
    if "${" in _ENV_REFERENCE.sub("", value):
        raise TargetConfigError(f"{path}: {where}: malformed reference {value!r}; write ${{VAR}} or ${{VAR:-default}}")
    return result


def _apply_environment(raw: dict, path: Path) -> tuple[dict, dict[str, str]]:
    """Fill in the ENV_FIELDS written as ${VAR}; refuse references anywhere else. Returns the new
    mapping and the bindings (field -> comma-separated variable names)."""
    bindings: dict[str, str] = {}

    def walk(value, where: str):
        if isinstance(value, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        if where not in ENV_FIELDS:
            raise TargetConfigError(
                f"{path}: {where}: ${{...}} is allowed only in {', '.join(ENV_FIELDS)} "
                "(secrets never go into a target file)"
            )
        used: list[str] = []
        result = _interpolate(value, where, path, used)
        bindings[where] = ",".join(dict.fromkeys(used))
        return result

    return walk(raw, ""), bindings


def load_target(path: str | Path) -> TargetConfig:
    """Read and validate one target file; errors name the file and the field."""
    path = Path(path)
    raw = read_yaml_mapping(path, "target file", TargetConfigError, "of fields")
    raw, bindings = _apply_environment(raw, path)
    try:
        config = TargetConfig.model_validate(_resolve_paths(raw, path.parent.resolve()))
    except ValidationError as exc:
        raise TargetConfigError(f"{path}: invalid target: {validation_problems(exc)}") from None
    config.source = str(path)
    config._env_bindings = bindings
    # A local path (resolved absolute by _resolve_paths) must be a directory: said here, not in a
    # worker's traceback seconds into the run. A bare hub id ("org/name") is left to the load in the
    # driver before the run (replay/targets/preflight.py).
    if config.tokenizer is not None and Path(config.tokenizer).is_absolute() and not Path(config.tokenizer).is_dir():
        tokenizer = Path(config.tokenizer)
        shown = str(tokenizer)
        missing = "is not a directory" if tokenizer.exists() else "does not exist"
        raise TargetConfigError(
            f"{path}: tokenizer: {shown} {missing}; a local Hugging Face tokenizer directory is needed"
        )
    return config


def target_from_public_dict(public: dict, source: str) -> TargetConfig:
    """A target as a manifest recorded it (TargetConfig.public_dict: names of key variables and key
    files, never a key), for `--resume`; `source` names where it was read, in errors."""
    raw = {k: v for k, v in public.items() if k != "from_env"}
    try:
        config = TargetConfig.model_validate(raw)
    except ValidationError as exc:
        raise TargetConfigError(f"{source}: invalid target: {validation_problems(exc)}") from None
    config.source = source
    config._env_bindings = dict(public.get("from_env") or {})
    return config


def load_targets(paths: Sequence[str | Path]) -> list[TargetConfig]:
    """Load several targets and check that their names are distinct."""
    targets = [load_target(p) for p in paths]
    names = [t.name for t in targets]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise TargetConfigError(f"target names must be distinct; repeated: {', '.join(duplicated)}")
    return targets


def read_keys(targets: Sequence[TargetConfig]) -> list[str]:
    """Every target's API key, read once in the driver before any server or worker starts, so a key
    that cannot be read is one clear error naming the target file and the variable or key file
    (TargetConfigError), not a failed worker. The keys are returned only to be scrubbed from what
    the run writes. Workers read their keys again in their own processes: on a multi-node cluster
    the variable must be set on every node, or the key given as `api_key_file` on a shared path."""
    return [key for target in targets if (key := target.api_key())]
