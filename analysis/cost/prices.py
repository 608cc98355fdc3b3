"""Price books: `configs/prices.yaml`, validated, and which entry prices which target.

A price book holds per-provider, per-model token prices (USD per million tokens for input,
cached input and output) and self-hosted deployments (GPU lease per GPU-hour x GPU count plus a
monthly engineering/on-call cost). Every entry is dated (`as_of`) and says whether it is an
`example` to be replaced by the user's contract. The format is documented in configs/prices.yaml.

Which entry prices a target (`PriceBook.match`), first rule that applies:
1. the target's own `price` key (an entry name) in its public config;
2. the book's `targets` map, target name -> entry name;
3. the provider named by the target's `provider` field, else the provider whose `base_url_hosts`
   holds the host of the target's `base_url`, and within it the model whose name or alias equals
   the target's `model`.
Otherwise the target has no price, with the reason; nothing is guessed.
Entry names are `<provider>/<model>` (the model part may itself contain `/`) or `self_hosted/<name>`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from shadowreplay.analysis.summary.traffic_stats import SECONDS_PER_MONTH
from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.config_files import read_yaml_mapping, validation_problems

SELF_HOSTED = "self_hosted"
DEFAULT_PRICES_PATH = Path("configs") / "prices.yaml"
HOURS_PER_MONTH = SECONDS_PER_MONTH // 3600
"""720: a month is 30 days throughout shadowreplay (analysis/summary/traffic_stats.py)."""


class PriceError(ShadowReplayError, ValueError):
    """A price file that cannot be read or does not validate; the message names the file and field."""


class _Entry(BaseModel):
    """What every price entry carries: the date its figures are from and whether they are an example."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    as_of: dt.date
    example: bool
    note: str | None = None


class TokenPrice(_Entry):
    """A hosted model's prices, USD per million tokens; cached input defaults to the input price."""

    aliases: tuple[str, ...] = ()
    input_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0)
    output_per_mtok: float = Field(ge=0)

    @property
    def cached_input_or_input_per_mtok(self) -> float:
        """The price of a cached prompt token: the cached price, or the input price when none is given."""
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok


class SelfHostedPrice(_Entry):
    """A self-hosted deployment: `gpu_count` GPUs leased at `gpu_hour_usd` each, plus engineering per month.

    `capacity_output_tokens_per_s` (optional) is what one deployment serves within the SLOs, e.g. a
    sweep's SLO capacity; the monthly projection uses it instead of the run's own throughput.
    """

    gpu: str
    gpu_hour_usd: float = Field(ge=0)
    gpu_count: int = Field(ge=1)
    engineering_usd_per_month: float = Field(0.0, ge=0)
    capacity_output_tokens_per_s: float | None = Field(None, gt=0)

    @property
    def gpu_usd_per_hour(self) -> float:
        """Lease of one deployment per hour = gpu_hour_usd x gpu_count."""
        return self.gpu_hour_usd * self.gpu_count

    @property
    def usd_per_hour(self) -> float:
        """Cost of one deployment per hour = gpu_hour_usd x gpu_count + engineering_usd_per_month / 720 h."""
        return self.gpu_usd_per_hour + self.engineering_usd_per_month / HOURS_PER_MONTH


class Provider(BaseModel):
    """A hosted provider: the hosts of its API (to recognise targets by base_url) and its models."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base_url_hosts: tuple[str, ...] = ()
    models: dict[str, TokenPrice] = Field(min_length=1)

    @field_validator("base_url_hosts")
    @classmethod
    def _lower_hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(host.lower() for host in hosts)

    @model_validator(mode="after")
    def _aliases_unique(self) -> Provider:
        seen: dict[str, str] = {}
        for name, price in self.models.items():
            for alias in (name, *price.aliases):
                if alias in seen and seen[alias] != name:
                    raise ValueError(f"model name or alias {alias!r} is used by both {seen[alias]} and {name}")
                seen[alias] = name
        return self

    def model_named(self, model: str) -> str | None:
        """The entry's model name for `model` (itself or an alias), or None."""
        if model in self.models:
            return model
        return next((name for name, price in self.models.items() if model in price.aliases), None)


class Billing(BaseModel):
    """What is billed: requests whose final attempt failed are not, unless `failed_requests` is true."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    failed_requests: bool = False


EntryName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
"""A provider or self-hosted entry name: letters, digits, `_`, `.`, `-` (no `/`)."""


class PriceBook(BaseModel):
    """The validated content of a price file; `source` is the file it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1]
    currency: Literal["USD"]
    billing: Billing = Field(default_factory=Billing)
    targets: dict[str, str] = Field(default_factory=dict)
    providers: dict[EntryName, Provider] = Field(default_factory=dict)
    self_hosted: dict[EntryName, SelfHostedPrice] = Field(default_factory=dict)
    source: str | None = Field(None, exclude=True)

    @field_validator("providers")
    @classmethod
    def _reserved_provider_name(cls, providers: dict[str, Provider]) -> dict[str, Provider]:
        if SELF_HOSTED in providers:
            raise ValueError(f"{SELF_HOSTED!r} is reserved for the self_hosted section")
        return providers

    @model_validator(mode="after")
    def _target_entries_exist(self) -> PriceBook:
        for target, entry in self.targets.items():
            if self.entry(entry) is None:
                raise ValueError(f"targets.{target}: no price entry {entry!r} in this file ({self.entry_names_hint()})")
        return self

    def entry(self, name: str) -> TokenPrice | SelfHostedPrice | None:
        """The entry called `name` (`<provider>/<model or alias>` or `self_hosted/<name>`), or None."""
        provider, _, model = name.partition("/")
        if provider == SELF_HOSTED:
            return self.self_hosted.get(model)
        found = self.providers.get(provider)
        if found is None:
            return None
        canonical = found.model_named(model)
        return found.models[canonical] if canonical is not None else None

    def entry_names_hint(self) -> str:
        names = [f"{p}/{m}" for p, provider in self.providers.items() for m in provider.models]
        names += [f"{SELF_HOSTED}/{n}" for n in self.self_hosted]
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        return f"entries: {shown}" if names else "it has no entries"

    def provider_for_host(self, host: str) -> str | None:
        """The provider whose base_url_hosts holds `host` (case-insensitive), or None."""
        host = host.lower()
        return next((name for name, p in self.providers.items() if host in p.base_url_hosts), None)

    def match(self, target: str, config: dict[str, Any] | None) -> PriceMatch:
        """The entry that prices `target`, whose public config (manifest `targets` item) is `config`."""
        config = config or {}
        own = config.get("price")
        if own:
            entry = self.entry(own)
            if entry is None:
                return PriceMatch(target, None, None, "target config", f"price entry {own!r} is not in the price file")
            return PriceMatch(target, _canonical(self, own), entry, "target config", None)
        if target in self.targets:
            name = self.targets[target]
            return PriceMatch(target, _canonical(self, name), self.entry(name), "price file targets", None)
        model = config.get("model")
        provider = config.get("provider")
        matched_by = "provider and model"
        if not provider:
            host = urlsplit(config.get("base_url") or "").hostname
            provider = self.provider_for_host(host) if host else None
            matched_by = "base_url host and model"
            if provider is None:
                reason = f"no provider lists host {host!r}" if host else "no provider, base_url or mapping"
                return PriceMatch(target, None, None, None, f"{reason}; map it under `targets:`")
        if provider not in self.providers:
            return PriceMatch(target, None, None, None, f"provider {provider!r} is not in the price file")
        canonical = self.providers[provider].model_named(model) if model else None
        if canonical is None:
            return PriceMatch(target, None, None, None, f"provider {provider} has no model {model!r}")
        return PriceMatch(
            target, f"{provider}/{canonical}", self.providers[provider].models[canonical], matched_by, None
        )


@dataclass(frozen=True, slots=True)
class PriceMatch:
    """How a target was priced: the entry's canonical name and content, the rule used, or why not."""

    target: str
    entry_name: str | None
    entry: TokenPrice | SelfHostedPrice | None
    matched_by: str | None
    no_price_reason: str | None

    @property
    def priced(self) -> bool:
        return self.entry is not None


def _canonical(book: PriceBook, name: str) -> str:
    """`<provider>/<alias>` -> `<provider>/<model>`; self-hosted names unchanged."""
    provider, _, model = name.partition("/")
    if provider == SELF_HOSTED:
        return name
    return f"{provider}/{book.providers[provider].model_named(model)}"


def load_prices(path: str | Path) -> PriceBook:
    """Read and validate a price file; PriceError names the file and the field of every problem."""
    path = Path(path)
    raw = read_yaml_mapping(path, "price file", PriceError, "schema_version, currency, providers, ...")
    try:
        book = PriceBook.model_validate(raw)
    except ValidationError as exc:
        raise PriceError(f"{path}: invalid price file: {validation_problems(exc)}") from None
    return book.model_copy(update={"source": str(path)})


def chosen_prices(option: str | None) -> PriceBook | None:
    """The price book a verb's `--prices` names: `none` for no cost section, a file, or by default
    DEFAULT_PRICES_PATH where it exists (else None)."""
    if option is not None and option.lower() == "none":
        return None
    if option is None:
        return load_prices(DEFAULT_PRICES_PATH) if DEFAULT_PRICES_PATH.is_file() else None
    return load_prices(option)
