"""The runbook's cost model (`capacity --cost-model FILE`, configs/cost_model.example.yaml).

The file is the runbook's scaffold, taken as written:

    cost_model:
      api_path: {monthly_tokens, cost_per_million_tokens, ...}
      self_host_path: {h100_monthly_lease, gpu_count_required, engineering_overhead_annual, ...}
      decision_threshold: {conditions: [...], ...}

- `api_path.cost_per_million_tokens`: the API's blended price, USD per million tokens (prompt and
  completion alike). `monthly_tokens`: the volume, used when `--volume` is not given.
- `self_host_path.h100_monthly_lease`: USD per GPU per month; `engineering_overhead_annual`: USD a
  year (on-call, upgrades), a twelfth of it each month. `gpu_count_required`: a placeholder
  (`YOUR_CAPACITY_CALC`, `auto`, anything not a number) means "derive it from the sweep"; a number
  is used as given, and the plan says whether it suffices.
- `decision_threshold.conditions`: the four conditions of the decision rule, each a name with a
  status: a list of `{name: true|false}` mappings or bare names, or one mapping of name to status
  (`true`, `false`, or `auto` / a bare name: not stated). Names as the runbook writes them are
  matched loosely (lower case, `_`, `-` and spaces alike): `gpu_infrastructure_allocated`,
  `volume_above_threshold`, `frontier_capability_not_required`, `on_call_coverage`.
  `decision_threshold.monthly_tokens` (or `volume_threshold_tokens`) sets the volume threshold
  (default 200M tokens a month). The volume condition is always computed from the plan's volume.
Other keys are kept and ignored (the scaffold carries notes); a key this module reads with a value
it cannot use is an error naming the file and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.config_files import read_yaml_mapping

DEFAULT_VOLUME_THRESHOLD_TOKENS = 200_000_000
CONDITIONS = (
    "gpu_infrastructure_allocated",
    "volume_above_threshold",
    "frontier_capability_not_required",
    "on_call_coverage",
)
_ALIASES = {
    "gpu_infrastructure_allocated": ("gpu_infrastructure_allocated", "gpus_allocated", "gpu_infrastructure"),
    "volume_above_threshold": ("volume_above_threshold", "volume_threshold", "monthly_volume_above_threshold"),
    "frontier_capability_not_required": (
        "frontier_capability_not_required",
        "no_frontier_capability_required",
        "frontier_not_required",
    ),
    "on_call_coverage": ("on_call_coverage", "oncall_coverage", "on_call"),
}


class CostModelError(ShadowReplayError, ValueError):
    """A cost-model file that cannot be used; the message names the file and the field."""


def _key(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _condition_name(name: str, where: str) -> str:
    key = _key(name)
    for canonical, aliases in _ALIASES.items():
        if key in aliases:
            return canonical
    raise CostModelError(f"{where}: unknown condition {name!r}; the decision rule's are {', '.join(CONDITIONS)}")


def _status(value: Any, where: str) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None or (isinstance(value, str) and _key(value) in ("auto", "unknown", "tbd", "")):
        return None
    if isinstance(value, str) and _key(value) in ("yes", "true", "met"):
        return True
    if isinstance(value, str) and _key(value) in ("no", "false", "not_met"):
        return False
    raise CostModelError(f"{where}: {value!r} is no status; write true, false or auto")


def _number(value: Any, where: str, placeholder_ok: bool = False) -> float | None:
    """A non-negative number; None for a placeholder where allowed (a string that is not a number)."""
    if isinstance(value, bool) or value is None:
        if value is None and placeholder_ok:
            return None
        raise CostModelError(f"{where}: {value!r} is not a number")
    if isinstance(value, int | float):
        if value < 0:
            raise CostModelError(f"{where}: {value} is negative")
        return float(value)
    if isinstance(value, str):
        try:
            return _number(float(value.replace("_", "").replace(",", "")), where)
        except ValueError:
            if placeholder_ok:
                return None
    raise CostModelError(f"{where}: {value!r} is not a number")


@dataclass(frozen=True)
class CostModel:
    """The cost model's figures (module docstring); None where the file leaves a figure out."""

    source: str
    api_cost_per_mtok: float | None = None
    api_monthly_tokens: float | None = None
    gpu_monthly_lease_usd: float | None = None
    engineering_monthly_usd: float = 0.0
    gpu_count_required: float | None = None  # None: derive it from the sweep
    volume_threshold_tokens: float = DEFAULT_VOLUME_THRESHOLD_TOKENS
    conditions: dict[str, bool | None] = field(default_factory=dict)  # as the file states them


def _conditions(raw: Any, where: str) -> dict[str, bool | None]:
    found: dict[str, bool | None] = {}
    items: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        for index, item in enumerate(raw):
            if isinstance(item, str):
                items.append((item, None))
            elif isinstance(item, dict) and len(item) == 1:
                items.append(next(iter(item.items())))
            elif isinstance(item, dict) and "name" in item:
                items.append((str(item["name"]), item.get("met", item.get("status"))))
            else:
                raise CostModelError(f"{where}[{index}]: write a condition as `name: true|false` or a bare name")
    elif raw is not None:
        raise CostModelError(f"{where}: a list of conditions, or a mapping of condition to status")
    for name, value in items:
        canonical = _condition_name(str(name), where)
        found[canonical] = _status(value, f"{where}.{name}")
    return found


def load_cost_model(path: str | Path) -> CostModel:
    """The cost model in `path` (module docstring)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "cost model", CostModelError, "cost_model: {api_path, self_host_path, ...}")
    model = raw.get("cost_model", raw)
    if not isinstance(model, dict):
        raise CostModelError(f"{path}: cost_model: must be a mapping (api_path, self_host_path, decision_threshold)")
    api = model.get("api_path") or {}
    host = model.get("self_host_path") or {}
    decision = model.get("decision_threshold") or {}
    for name, part in (("api_path", api), ("self_host_path", host), ("decision_threshold", decision)):
        if not isinstance(part, dict):
            raise CostModelError(f"{path}: cost_model.{name}: must be a mapping")

    def number(part: dict, section: str, name: str, placeholder_ok: bool = False) -> float | None:
        if name not in part:
            return None
        return _number(part[name], f"{path}: cost_model.{section}.{name}", placeholder_ok)

    annual = number(host, "self_host_path", "engineering_overhead_annual")
    threshold = number(decision, "decision_threshold", "monthly_tokens")
    if threshold is None:
        threshold = number(decision, "decision_threshold", "volume_threshold_tokens")
    return CostModel(
        source=str(path),
        api_cost_per_mtok=number(api, "api_path", "cost_per_million_tokens"),
        api_monthly_tokens=number(api, "api_path", "monthly_tokens", placeholder_ok=True),
        gpu_monthly_lease_usd=number(host, "self_host_path", "h100_monthly_lease"),
        engineering_monthly_usd=(annual or 0.0) / 12.0,
        gpu_count_required=number(host, "self_host_path", "gpu_count_required", placeholder_ok=True),
        volume_threshold_tokens=threshold if threshold is not None else DEFAULT_VOLUME_THRESHOLD_TOKENS,
        conditions=_conditions(decision.get("conditions"), f"{path}: cost_model.decision_threshold.conditions"),
    )
