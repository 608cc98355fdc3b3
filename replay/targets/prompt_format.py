"""The chat-template check: a traffic log's chat requests rendered through each target's own template.

Moving traffic from one model family to another (Llama to Gemma, say) changes the instruction format:
the candidate's chat template may refuse what the baseline's accepted (Gemma's raises on a system
role, or on turns that do not alternate), may render the same conversation into more tokens, and so
push long requests past its context. This module finds, per target, before anything is replayed:
(a) the chat *structures* its template rejects, (b) the requests whose rendered prompt exceeds its
context, (c) each request's rendered length, to compare between targets.

Structures
A request's structure is the sequence of its messages' roles, e.g. ("system", "user", "assistant",
"user"), and whether `params` carries tools. A template's acceptance depends on the structure, so one
representative request per structure (its first in the log) is rendered to decide rejection; every
chat request with messages is counted under its structure (up to EXAMPLE_IDS ids kept). Messages that
are not a JSON list of message objects count under UNPARSEABLE, rejected with the parse error. Each
target's rejected structures, summed, are `rejected_requests(target)`.

Rendered lengths
Each checked request is rendered as vLLM renders it, `apply_chat_template(messages, tokenize=False,
add_generation_prompt=True, tools=...)`, and the text counted by the same tokenizer without adding
special tokens (the template holds its BOS), as replay/requests/prompt_synthesis.py counts. Requests
of a rejected structure are not rendered (null length); a request whose own render raises although
its structure's representative rendered is a null too, counted in `render_failures`. That is the
costly part (about 0.05-0.5 ms a request and target), so at most `max_requests` chat requests are
rendered: an evenly spaced, deterministic sample of the log's chat rows (`sampled` says so).

Context
A target's context (`context_tokens`, `context_sources` says where it came from): vLLM's
`--max-model-len` in `vllm.args` (k/m: x1000, K/M: x1024, as vLLM reads them); else
`max_position_embeddings` of the model's config.json (the local vllm.model directory, then the
tokenizer directory; a multimodal config's `text_config` too); else a sane (< 10^8) `model_max_length`
of tokenizer_config.json; else unknown, and the target has no `over_context` entry. A request is over
context when its rendered prompt alone is longer than the context (room for its output not counted).

Reading the log takes request_id and api of every row, then messages and params of the row groups
holding selected chat rows, batch by batch: every chat row's messages are parsed once (about 10 us per
KB), only the sample's are kept. The report is written to a directory as prompt_format.json (without
the per-request table) and prompt_format_tokens.parquet, each atomically.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.requests.prompt_synthesis import PromptSynthesisError, load_hf_tokenizer
from shadowreplay.replay.schemas.traffic_log import TrafficLog, open_traffic_log
from shadowreplay.replay.targets.config import TargetConfig
from shadowreplay.replay.targets.vllm_replicas import flag_value

REPORT_NAME = "prompt_format.json"
TOKENS_NAME = "prompt_format_tokens.parquet"
REPORT_VERSION = 1
DEFAULT_MAX_REQUESTS = 20000
UNPARSEABLE = "<unparseable>"
NO_ROLE = "<no role>"
EXAMPLE_IDS = 5
OVER_CONTEXT_IDS = 20
MAX_ERROR_CHARS = 300
SANE_MODEL_MAX_LENGTH = 10**8  # tokenizer_config.json's "no limit" is a huge number (1e30)
MAX_MODEL_LEN_FLAGS = ("--max-model-len", "--max_model_len")
READ_BATCH_ROWS = 4096
ENCODE_BATCH = 512
TOKENS_PREFIX = "tokens_"

StructureKey = tuple[tuple[str, ...], bool]  # (roles, tools)
_UNPARSEABLE_KEY: StructureKey = ((UNPARSEABLE,), False)
_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)")
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class PromptFormatError(ShadowReplayError, ValueError):
    """A chat-template check that cannot run as asked (bad arguments, no shards, an unreadable report)."""


@dataclass(frozen=True)
class StructureFinding:
    """One chat structure through one target's template: how many requests have it, a few of their ids,
    and whether the template rejected its representative (with the template's message, one line)."""

    target: str
    roles: tuple[str, ...]
    tools: bool
    requests: int
    example_ids: tuple[str, ...]
    rejected: bool
    error: str | None

    def to_json_dict(self) -> dict[str, Any]:
        """The finding as JSON values (tuples as lists)."""
        return {
            "target": self.target,
            "roles": list(self.roles),
            "tools": self.tools,
            "requests": self.requests,
            "example_ids": list(self.example_ids),
            "rejected": self.rejected,
            "error": self.error,
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> StructureFinding:
        """The finding `to_json_dict` wrote."""
        return cls(
            target=str(data["target"]),
            roles=tuple(data["roles"]),
            tools=bool(data["tools"]),
            requests=int(data["requests"]),
            example_ids=tuple(data["example_ids"]),
            rejected=bool(data["rejected"]),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class PromptFormatReport:
    """What `check_prompt_formats` found. `targets` names every target given, in order; those in `skipped`
    were not checked and have no findings and no `tokens_<target>` column. `chat_requests` are the chat rows
    with messages (what `structures` count); `checked_requests` those rendered (rows of `token_counts`:
    `request_id`, then `tokens_<target>` per checked target, null where not rendered); `sampled` when that is
    a sample of the chat rows. `over_context` and `over_context_ids` (the first OVER_CONTEXT_IDS) hold only
    checked targets whose context is known (`context_tokens`, from `context_sources`)."""

    targets: tuple[str, ...]
    structures: tuple[StructureFinding, ...]
    checked_requests: int
    chat_requests: int
    sampled: bool
    over_context: dict[str, int]
    over_context_ids: dict[str, tuple[str, ...]]
    context_tokens: dict[str, int | None]
    token_counts: pl.DataFrame = field(compare=False)
    skipped: dict[str, str]
    context_sources: dict[str, str] = field(default_factory=dict)
    render_failures: dict[str, int] = field(default_factory=dict)  # rendered alone: raised, structure accepted
    without_messages: int = 0  # chat rows with null messages (text-less traces): not checked

    @property
    def checked_targets(self) -> tuple[str, ...]:
        """The targets that were checked (not skipped), in order."""
        return tuple(t for t in self.targets if t not in self.skipped)

    def rejected_requests(self, target: str) -> int:
        """Requests whose structure `target`'s template rejected (unparseable messages included)."""
        return sum(s.requests for s in self.structures if s.target == target and s.rejected)

    def token_difference_summary(self, a: str, b: str) -> dict[str, Any]:
        """How `b`'s rendered prompts differ from `a`'s over the requests both rendered: median and p95 of
        tokens_b - tokens_a and of tokens_b / tokens_a, and the largest |difference| with its request id
        (None values where no request was rendered by both)."""
        both = self.token_counts.select(
            "request_id", pl.col(self._column(a)).alias("a"), pl.col(self._column(b)).alias("b")
        ).drop_nulls()
        summary: dict[str, Any] = {"a": a, "b": b, "requests": both.height}
        if both.height == 0:
            keys = ("median_difference", "p95_difference", "median_ratio", "p95_ratio", "max_abs_difference")
            return {**summary, **dict.fromkeys(keys), "max_abs_difference_request_id": None}
        tokens_a = both["a"].to_numpy().astype(np.float64)
        tokens_b = both["b"].to_numpy().astype(np.float64)
        difference = tokens_b - tokens_a
        ratio = tokens_b[tokens_a > 0] / tokens_a[tokens_a > 0]
        largest = int(np.argmax(np.abs(difference)))
        return {
            **summary,
            "median_difference": float(np.median(difference)),
            "p95_difference": float(np.percentile(difference, 95)),
            "median_ratio": float(np.median(ratio)) if ratio.size else None,
            "p95_ratio": float(np.percentile(ratio, 95)) if ratio.size else None,
            "max_abs_difference": int(abs(difference[largest])),
            "max_abs_difference_request_id": str(both["request_id"][largest]),
        }

    def token_differences(self) -> dict[str, dict[str, Any]]:
        """`token_difference_summary` of every pair of checked targets, earlier against later, keyed `a -> b`."""
        checked = self.checked_targets
        return {
            f"{a} -> {b}": self.token_difference_summary(a, b) for i, a in enumerate(checked) for b in checked[i + 1 :]
        }

    def to_json_dict(self) -> dict[str, Any]:
        """The report as JSON values, without the per-request table: `token_differences` holds each pair's
        summary as one sentence, `token_difference_stats` the same as numbers."""
        stats = self.token_differences()
        return {
            "version": REPORT_VERSION,
            "targets": list(self.targets),
            "chat_requests": self.chat_requests,
            "checked_requests": self.checked_requests,
            "sampled": self.sampled,
            "without_messages": self.without_messages,
            "structures": [s.to_json_dict() for s in self.structures],
            "rejected_requests": {t: self.rejected_requests(t) for t in self.checked_targets},
            "render_failures": dict(self.render_failures),
            "over_context": dict(self.over_context),
            "over_context_ids": {t: list(ids) for t, ids in self.over_context_ids.items()},
            "context_tokens": dict(self.context_tokens),
            "context_sources": dict(self.context_sources),
            "skipped": dict(self.skipped),
            "token_differences": {pair: describe_difference(s) for pair, s in stats.items()},
            "token_difference_stats": stats,
        }

    def write(self, directory: Path) -> None:
        """prompt_format_tokens.parquet, then prompt_format.json, into `directory`, each through a hidden
        temporary file and a rename (the JSON, written last, is there only with its table)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokens_tmp = _temporary(directory / TOKENS_NAME)
        self.token_counts.write_parquet(tokens_tmp)
        os.replace(tokens_tmp, directory / TOKENS_NAME)
        report_tmp = _temporary(directory / REPORT_NAME)
        report_tmp.write_text(json.dumps(self.to_json_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(report_tmp, directory / REPORT_NAME)

    @classmethod
    def read(cls, directory: Path) -> PromptFormatReport | None:
        """The report `write` left in `directory`, or None where either of its files is absent."""
        report_path, tokens_path = Path(directory) / REPORT_NAME, Path(directory) / TOKENS_NAME
        if not report_path.is_file() or not tokens_path.is_file():
            return None
        try:
            data = json.loads(report_path.read_text(encoding="utf-8"))
            return cls(
                targets=tuple(data["targets"]),
                structures=tuple(StructureFinding.from_json_dict(s) for s in data["structures"]),
                checked_requests=int(data["checked_requests"]),
                chat_requests=int(data["chat_requests"]),
                sampled=bool(data["sampled"]),
                over_context={t: int(n) for t, n in data["over_context"].items()},
                over_context_ids={t: tuple(ids) for t, ids in data["over_context_ids"].items()},
                context_tokens=dict(data["context_tokens"]),
                token_counts=pl.read_parquet(tokens_path),
                skipped=dict(data["skipped"]),
                context_sources=dict(data.get("context_sources", {})),
                render_failures={t: int(n) for t, n in data.get("render_failures", {}).items()},
                without_messages=int(data.get("without_messages", 0)),
            )
        except (ValueError, KeyError, TypeError, OSError, pl.exceptions.PolarsError) as exc:
            raise PromptFormatError(f"{directory}: cannot read the chat-template check: {exc}") from None

    def _column(self, target: str) -> str:
        column = TOKENS_PREFIX + target
        if column not in self.token_counts.columns:
            raise PromptFormatError(
                f"target {target!r} was not checked (checked: {', '.join(self.checked_targets) or 'none'})"
            )
        return column


def describe_difference(summary: dict[str, Any]) -> str:
    """One sentence of a `token_difference_summary`."""
    a, b, n = summary["a"], summary["b"], summary["requests"]
    if not n:
        return f"no request rendered by both {a} and {b}"
    ratios = ""
    if summary["median_ratio"] is not None:
        ratios = f" (ratio median {summary['median_ratio']:.3f}, p95 {summary['p95_ratio']:.3f})"
    return (
        f"{b} minus {a} over {n:,} requests: median {summary['median_difference']:+g} tokens, "
        f"p95 {summary['p95_difference']:+g}{ratios}; largest |difference| {summary['max_abs_difference']:,} "
        f"({summary['max_abs_difference_request_id']})"
    )


# ---- context length ---------------------------------------------------------------------------------


def parse_context_length(value: str) -> int | None:
    """A `--max-model-len` value as vLLM reads it: 4096, 32k (x1000), 32K (x1024), 1m, 1M; None for -1/auto
    or anything else (the model's own length then applies)."""
    match = _HUMAN_INT.fullmatch(value.strip())
    if match is None:
        return None
    number, suffix = match.groups()
    scale = _BINARY.get(suffix) or _DECIMAL.get(suffix.lower(), 1)
    tokens = int(float(number) * scale)
    return tokens if tokens > 0 else None


def _local_dirs(target: TargetConfig) -> list[Path]:
    """The local model directories whose config may say the context: vllm.model, then the tokenizer's."""
    candidates = [target.vllm.model if target.vllm is not None else None, target.tokenizer]
    dirs = [Path(c) for c in candidates if c]
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def target_context_tokens(target: TargetConfig) -> tuple[int | None, str | None]:
    """The context length of `target` in tokens and where it was found (None, None when unknown); see the
    module docstring for the order."""
    if target.vllm is not None:
        flag = flag_value(target.vllm.args, MAX_MODEL_LEN_FLAGS)
        tokens = parse_context_length(flag) if flag is not None else None
        if tokens is not None:
            return tokens, "vllm.args --max-model-len"
    dirs = _local_dirs(target)
    for directory in dirs:
        config = _read_json(directory / "config.json")
        for section in (config, config.get("text_config")):
            value = section.get("max_position_embeddings") if isinstance(section, dict) else None
            if isinstance(value, int) and value > 0:
                return value, f"{directory / 'config.json'} max_position_embeddings"
    for directory in dirs:
        value = _read_json(directory / "tokenizer_config.json").get("model_max_length")
        if isinstance(value, int | float) and 0 < value < SANE_MODEL_MAX_LENGTH:
            return int(value), f"{directory / 'tokenizer_config.json'} model_max_length"
    return None, None


# ---- reading the log --------------------------------------------------------------------------------


@dataclass
class _Row:
    """A chat request kept for rendering: its parsed messages and tools."""

    request_id: str
    messages: list[dict[str, Any]]
    tools: list[Any] | None
    key: StructureKey


@dataclass
class _Structure:
    """A structure's count, example ids, and its representative (the first request that has it)."""

    requests: int = 0
    example_ids: list[str] = field(default_factory=list)
    representative: _Row | None = None
    error: str | None = None  # UNPARSEABLE: the first parse error


@dataclass
class _LogScan:
    """What the log holds for the check: structures of every selected chat row, the sampled rows parsed."""

    structures: dict[StructureKey, _Structure]
    rows: list[_Row]
    chat_requests: int
    without_messages: int
    sampled: bool


def _chat_mask(pf: TrafficLog, request_ids: pa.Array | None) -> np.ndarray:
    """Which rows of the file are chat rows (among `request_ids` where given), read from two columns."""
    table = pf.read(columns=["request_id", "api"])
    mask = pc.fill_null(pc.equal(table.column("api"), "chat"), False)
    if request_ids is not None:
        mask = pc.and_(mask, pc.is_in(table.column("request_id"), value_set=request_ids))
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _sample_positions(total: int, max_requests: int | None) -> np.ndarray | None:
    """Evenly spaced positions among `total` rows, `max_requests` of them (None: every row)."""
    if max_requests is None or total <= max_requests:
        return None
    return (np.arange(max_requests, dtype=np.int64) * total) // max_requests


def _selected_batches(pf: TrafficLog, mask: np.ndarray) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row index, batch of request_id, messages, params) of the row groups holding selected rows."""
    start = 0
    for group in range(pf.num_row_groups):
        rows = pf.row_group_rows(group)
        if mask[start : start + rows].any():
            offset = start
            for batch in pf.iter_batches(
                batch_size=READ_BATCH_ROWS, row_groups=[group], columns=["request_id", "messages", "params"]
            ):
                yield offset, batch
                offset += batch.num_rows
        start += rows


def _one_line(text: str) -> str:
    """`text` on one line, at most MAX_ERROR_CHARS characters."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def parse_chat(messages: str, params: str | None) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """A row's messages (a JSON list of message objects) and its tools (params' non-empty `tools` list, or
    None); ValueError naming what is wrong with messages. Params that do not parse count as no tools."""
    parsed = json.loads(messages)
    if not isinstance(parsed, list) or not all(isinstance(m, dict) for m in parsed):
        raise ValueError("messages is not a JSON list of message objects")
    tools = None
    if params:
        try:
            options = json.loads(params)
        except ValueError:
            options = None
        found = options.get("tools") if isinstance(options, dict) else None
        tools = found if isinstance(found, list) and found else None
    return parsed, tools


def structure_of(messages: list[dict[str, Any]], tools: list[Any] | None) -> StructureKey:
    """The structure of a parsed request: its roles in order, and whether it carries tools."""
    roles = tuple(m["role"] if isinstance(m.get("role"), str) else NO_ROLE for m in messages)
    return roles, tools is not None


def _scan_log(log: Path, request_ids: Collection[str] | None, max_requests: int | None) -> _LogScan:
    """Every selected chat row's structure, and the parsed rows of the sample, in log order."""
    ids = pa.array(sorted(set(request_ids)), type=pa.string()) if request_ids is not None else None
    log_file = open_traffic_log(log)
    mask = _chat_mask(log_file, ids)
    total = int(mask.sum())
    picks = _sample_positions(total, max_requests)
    structures: dict[StructureKey, _Structure] = {}
    rows: list[_Row] = []
    chat = without = 0
    position = 0  # among selected chat rows
    for offset, batch in _selected_batches(log_file, mask):
        selected = np.flatnonzero(mask[offset : offset + batch.num_rows])
        if not selected.size:
            continue
        request_column = batch.column("request_id").to_pylist()
        messages_column = batch.column("messages").to_pylist()
        params_column = batch.column("params").to_pylist()
        keep = np.ones(selected.size, dtype=bool)
        if picks is not None:
            keep = np.isin(np.arange(position, position + selected.size), picks, assume_unique=True)
        position += selected.size
        for index, sampled in zip(selected.tolist(), keep.tolist()):
            if messages_column[index] is None:
                without += 1
                continue
            chat += 1
            request_id = str(request_column[index])
            try:
                messages, tools = parse_chat(messages_column[index], params_column[index])
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                unparseable = _count(structures, _UNPARSEABLE_KEY, request_id)
                if unparseable.error is None:
                    json_error = isinstance(exc, json.JSONDecodeError)
                    unparseable.error = _one_line(f"{type(exc).__name__}: {exc}" if json_error else str(exc))
                continue
            row = _Row(request_id, messages, tools, structure_of(messages, tools))
            structure = _count(structures, row.key, request_id)
            if structure.representative is None:
                structure.representative = row
            if sampled:
                rows.append(row)
    return _LogScan(structures, rows, chat, without, picks is not None)


def _count(structures: dict[StructureKey, _Structure], key: StructureKey, request_id: str) -> _Structure:
    """Count one request under `key` (keeping its id among the first EXAMPLE_IDS)."""
    structure = structures.setdefault(key, _Structure())
    structure.requests += 1
    if len(structure.example_ids) < EXAMPLE_IDS:
        structure.example_ids.append(request_id)
    return structure


# ---- rendering --------------------------------------------------------------------------------------


def _load_template_tokenizer(target: TargetConfig, loaded: dict[Path, Any]) -> tuple[Any | None, str | None]:
    """The tokenizer of `target` (loaded once per directory per check), or None and why it cannot be used."""
    if not target.tokenizer:
        return None, "no tokenizer configured"
    directory = Path(target.tokenizer)
    if not directory.is_dir():
        return None, f"tokenizer directory {directory} is missing (a local Hugging Face tokenizer directory is needed)"
    key = directory.resolve()
    if key not in loaded:
        try:
            loaded[key] = load_hf_tokenizer(directory)
        except PromptSynthesisError as exc:
            return None, str(exc)
    tokenizer = loaded[key]
    if not getattr(tokenizer, "chat_template", None):
        return None, f"the tokenizer in {directory} has no chat template"
    return tokenizer, None


def render_chat(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[Any] | None
) -> tuple[str | None, str | None]:
    """The prompt `tokenizer`'s chat template renders for the request, as vLLM renders it (with the generation
    prompt), or None and the error, one line: the template's own message for a jinja2 TemplateError (a template's
    raise_exception), the exception's type and message for anything else."""
    import jinja2  # transformers renders with it; imported where templates are rendered

    extra = {"tools": tools} if tools is not None else {}
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
    except jinja2.TemplateError as exc:
        return None, _one_line(str(exc) or type(exc).__name__)
    except Exception as exc:  # a template may fail any way; one request never stops the check
        return None, _one_line(f"{type(exc).__name__}: {exc}")
    if not isinstance(text, str):
        return None, f"the chat template rendered a {type(text).__name__}, not text"
    return text, None


def _count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Tokens of each rendered prompt, special tokens not added again (the template holds them)."""
    backend = tokenizer.backend_tokenizer
    counts: list[int] = []
    for start in range(0, len(texts), ENCODE_BATCH):
        encoded = backend.encode_batch(texts[start : start + ENCODE_BATCH], add_special_tokens=False)
        counts.extend(len(e.ids) for e in encoded)
    return counts


@dataclass(frozen=True)
class _TargetCheck:
    """One target's findings: per structure (rejected, error), per checked row its length or None."""

    findings: tuple[StructureFinding, ...]
    tokens: list[int | None]
    render_failures: int


def _check_target(name: str, tokenizer: Any, scan: _LogScan) -> _TargetCheck:
    """Render each structure's representative, then each sampled row of an accepted structure, and count."""
    findings = []
    rejected: set[StructureKey] = set()
    for key, structure in scan.structures.items():
        if key == _UNPARSEABLE_KEY or structure.representative is None:
            error: str | None = structure.error
        else:
            _, error = render_chat(tokenizer, structure.representative.messages, structure.representative.tools)
        if error is not None:
            rejected.add(key)
        roles, tools = key
        findings.append(
            StructureFinding(
                name, roles, tools, structure.requests, tuple(structure.example_ids), error is not None, error
            )
        )
    texts: list[str] = []
    rendered_at: list[int] = []
    failures = 0
    for index, row in enumerate(scan.rows):
        if row.key in rejected:
            continue
        text, _ = render_chat(tokenizer, row.messages, row.tools)
        if text is None:
            failures += 1
            continue
        texts.append(text)
        rendered_at.append(index)
    tokens: list[int | None] = [None] * len(scan.rows)
    for index, count in zip(rendered_at, _count_tokens(tokenizer, texts)):
        tokens[index] = count
    findings.sort(key=lambda f: (-f.requests, f.roles, f.tools))
    return _TargetCheck(tuple(findings), tokens, failures)


def check_prompt_formats(
    log: Path,
    targets: Sequence[TargetConfig],
    *,
    request_ids: Collection[str] | None = None,
    max_requests: int | None = DEFAULT_MAX_REQUESTS,
) -> PromptFormatReport:
    """Every chat structure of the traffic log `log` (a Parquet file or a directory of shards) through each
    target's chat template, and each chat request's rendered length per target (at most `max_requests` of them,
    an evenly spaced sample; None: all); `request_ids` restricts the check to those rows (a replay's selection).
    Targets without a usable local tokenizer with a chat template are `skipped`, with the reason."""
    if max_requests is not None and max_requests < 1:
        raise PromptFormatError(f"max_requests must be at least 1 (or None for all), got {max_requests}")
    names = [t.name for t in targets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PromptFormatError(f"target names must be distinct; repeated: {', '.join(repeated)}")
    scan = _scan_log(Path(log), request_ids, max_requests)
    loaded: dict[Path, Any] = {}
    columns: dict[str, Any] = {"request_id": pl.Series([r.request_id for r in scan.rows], dtype=pl.String)}
    structures: list[StructureFinding] = []
    skipped: dict[str, str] = {}
    context_tokens: dict[str, int | None] = {}
    context_sources: dict[str, str] = {}
    over_context: dict[str, int] = {}
    over_context_ids: dict[str, tuple[str, ...]] = {}
    render_failures: dict[str, int] = {}
    for target in targets:
        context, source = target_context_tokens(target)
        context_tokens[target.name] = context
        if source is not None:
            context_sources[target.name] = source
        tokenizer, why = _load_template_tokenizer(target, loaded)
        if tokenizer is None:
            skipped[target.name] = why or "not checked"
            continue
        checked = _check_target(target.name, tokenizer, scan)
        structures.extend(checked.findings)
        render_failures[target.name] = checked.render_failures
        columns[TOKENS_PREFIX + target.name] = pl.Series(checked.tokens, dtype=pl.Int64)
        if context is not None:
            over = [r.request_id for r, n in zip(scan.rows, checked.tokens) if n is not None and n > context]
            over_context[target.name] = len(over)
            over_context_ids[target.name] = tuple(over[:OVER_CONTEXT_IDS])
    return PromptFormatReport(
        targets=tuple(names),
        structures=tuple(structures),
        checked_requests=len(scan.rows),
        chat_requests=scan.chat_requests,
        sampled=scan.sampled,
        over_context=over_context,
        over_context_ids=over_context_ids,
        context_tokens=context_tokens,
        token_counts=pl.DataFrame(columns),
        skipped=skipped,
        context_sources=context_sources,
        render_failures=render_failures,
        without_messages=scan.without_messages,
    )


def _temporary(path: Path) -> Path:
    """A hidden temporary name beside `path` (no reader lists it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")
