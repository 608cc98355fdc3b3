"""The capture's recorder: finished exchanges into a traffic-log directory, redacted before they
reach the disk, in rotated Parquet shards each committed atomically.

Threads. The proxy's event loop hands each finished exchange to `CaptureRecorder.record`, a put on
a bounded queue that never waits: with the queue full (the disk stalled) the record is dropped and
counted (`record_dropped`), production's response is never held. One recorder thread turns the
exchanges into rows (`CapturedExchange.row`), samples them (`--sample`), redacts them
(replay/capture/redaction.py: messages, prompt, answer and params; a session id a rule matches
becomes a pseudonym, the same for the whole capture) and adds them to the capture log.

The capture log (`CaptureLog`) is a directory of rotations. A rotation `capture-<UTC start>` is
written as small parts `capture-<start>-NNNNN.parquet` by the one shard writer
(replay/schemas/shards.py), a part committed every `flush_s` (1 s by default), and when the rotation
ends (`--rotate`: after a time, `10min`, or a number of rows, `100k`) a merge thread writes its parts
into one shard `capture-<start>.parquet` and then deletes them. Readers never read a part that a
merged shard covers (replay/schemas/traffic_log.py), so the directory is a valid traffic log at
every moment, with every row once. A crash loses at most the rows not yet in a committed part: the
exchanges finished in the last `flush_s`, and those still queued (the manifest's `queue_peak` says
how many were ever waiting at once); exchanges in flight at the crash were never answered whole.
A later capture into the directory merges a crashed rotation's parts, or deletes them where their
merge was committed, before it starts; a lock file keeps two captures out of one directory.

The capture's manifest (`capture-<start>.json`, one per capture process, rewritten atomically every
`flush_s` and at the end) holds what was captured and how: the upstream (without credentials or a
query), the rotation, the sampling, the redaction rules and the matches replaced per rule, the
proxy's and the recorder's counts, the shards written, and whether the capture stopped cleanly.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import queue
import random
import re
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from shadowreplay import __version__
from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.capture.exchange import CapturedExchange
from shadowreplay.replay.capture.mirror import CaptureMirror
from shadowreplay.replay.capture.proxy import ProxyCounts
from shadowreplay.replay.capture.redaction import Redactor
from shadowreplay.replay.schemas.durations import DurationError, parse_duration_s
from shadowreplay.replay.schemas.run_dir import write_text_atomically
from shadowreplay.replay.schemas.shadow_requests import SHADOW_REQUESTS_SCHEMA, shadow_requests, write_shadow_requests
from shadowreplay.replay.schemas.shards import COMPRESSION, SHARD_SUFFIX, ShardWriter, commit_file, committed_shards
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA, part_of

CAPTURE_SCHEMA = pa.schema(
    [
        *TRAFFIC_LOG_SCHEMA,
        pa.field("prod_ttft_ms", pa.float64()),
        pa.field("prod_e2e_ms", pa.float64()),
        pa.field("prod_status", pa.string()),
        pa.field("prod_http_status", pa.int32()),
    ],
    metadata=TRAFFIC_LOG_SCHEMA.metadata,
)
"""A captured row: the traffic log's columns and production's own timings and outcome (exchange.CAPTURE_COLUMNS)."""

FACT_COLUMNS = [name for name in SHADOW_REQUESTS_SCHEMA.names if name != "arrival_s"]
"""The captured columns the mirror's requests facts are made from."""
ROTATION_PREFIX = "capture-"
LOCK_NAME = ".capture.lock"
FLUSH_S = 1.0
MAX_QUEUED = 10_000  # exchanges waiting for the recorder thread, at most; beyond: dropped, counted
MERGED_ROW_GROUP_ROWS = 10_000  # rows per row group of a merged rotation (replay's window reads by row group)
PART_MAX_ROWS = 50_000  # a part is committed at this many rows even before flush_s (a burst stays bounded)
_ROWS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKM]?)\s*$")


class CaptureError(ShadowReplayError):
    """A capture that cannot start as asked (a bad rotation, a directory another capture holds)."""


@dataclass(frozen=True)
class Rotation:
    """When a rotation ends: after `every_s` seconds or after `every_rows` rows (one of them)."""

    every_s: float | None = 600.0
    every_rows: int | None = None

    @classmethod
    def parse(cls, text: str) -> Rotation:
        """'10min', '1h', '30s', '1.5m' (a time) or '100k', '1M', '5000' (rows: a bare number, k or M)."""
        rows = _ROWS.match(text)
        if rows is not None:
            count = int(float(rows.group(1)) * {"": 1, "k": 1e3, "K": 1e3, "M": 1e6}[rows.group(2)])
            if count < 1:
                raise CaptureError(f"--rotate {text!r}: a rotation holds at least one row")
            return cls(every_s=None, every_rows=count)
        try:
            seconds = parse_duration_s(re.sub(r"min\s*$", "m", text.strip()), "--rotate")
        except DurationError:
            raise CaptureError(
                f"--rotate {text!r}: expected a time (10min, 1h, 30s) or a number of rows (100k, 1M, 5000)"
            ) from None
        if seconds <= 0:
            raise CaptureError(f"--rotate {text!r}: must be positive")
        return cls(every_s=seconds, every_rows=None)

    @property
    def spec(self) -> str:
        return f"{self.every_s:g}s" if self.every_s is not None else f"{self.every_rows} rows"


def public_upstream(url: str) -> str:
    """The upstream URL as a manifest may show it: no user, password or query (a key may be in them)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class CaptureManifest(BaseModel):
    """LOG_DIR/capture-<start>.json: one capture process, what it captured and how (module docstring)."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["capture"] = "capture"
    shadowreplay: str = __version__
    started_at: str
    updated_at: str
    stopped_at: str | None = None
    clean_stop: bool = False
    listen: str
    upstream: str
    rotate: str
    flush_s: float
    sample: float
    redaction_rules: list[str]
    redactions: dict[str, int]
    tokenizer_guided_redaction: bool
    proxy: dict[str, int]
    recorder: dict[str, int]
    shards: list[str]
    recovered: list[str]
    first_error: str | None = None
    mirror: dict[str, Any] | None = None


@dataclass
class RecorderCounts:
    """What the recorder did with the exchanges it was handed."""

    received: int = 0
    written: int = 0
    sampled_out: int = 0
    record_dropped: int = 0
    unrecordable: int = 0
    queue_peak: int = 0
    rotations: int = 0
    merges: int = 0
    write_failures: int = 0


def _utc_stamp(now_ms: int) -> str:
    return datetime.fromtimestamp(now_ms // 1000, UTC).strftime("%Y%m%dT%H%M%S") + f".{now_ms % 1000:03d}Z"


def _iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")


class CaptureLog:
    """A capture's directory: the current rotation's writer, its end, and the merges (module docstring).
    Used from one thread (the recorder's); the merges run on a thread of their own."""

    def __init__(
        self,
        directory: Path,
        rotation: Rotation,
        flush_s: float = FLUSH_S,
        counts: RecorderCounts | None = None,
        on_merged: Callable[[Path], None] | None = None,
    ):
        """`on_merged(shard)`: called on the merge thread after each of this capture's rotations is merged."""
        self.directory = Path(directory)
        self.on_merged = on_merged
        self.rotation = rotation
        self.flush_s = flush_s
        self.counts = counts if counts is not None else RecorderCounts()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        self.shards: list[str] = []  # merged rotations written by this capture
        self.recovered: list[str] = []  # rotations of an earlier capture merged (or tidied) at start
        self.first_error: str | None = None
        self._merges: queue.Queue[tuple[str, list[Path]] | None] = queue.Queue()
        self._merger = threading.Thread(target=self._merge_forever, name="capture-merge", daemon=True)
        self._merger.start()
        self._recover()
        self._writer: ShardWriter | None = None
        self._unclosed: list[tuple[str, ShardWriter]] = []  # ended rotations whose last write failed
        self._rotation_name = ""
        self._rotation_started = 0.0
        self._rotation_rows = 0

    def _take_lock(self) -> int:
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CaptureError(f"{self.directory}: another capture is writing this directory") from None
        return fd

    def _recover(self) -> None:
        """An earlier capture's leftovers: parts whose merge was committed are deleted, parts without
        one are merged; hidden temporary files (never committed) are removed."""
        for stale in self.directory.glob(f".{ROTATION_PREFIX}*.tmp"):
            stale.unlink(missing_ok=True)
        committed = committed_shards(self.directory)
        names = {p.name for p in committed}
        parts: dict[str, list[Path]] = {}
        for shard in committed:
            whole = part_of(shard)
            if whole is not None and shard.name.startswith(ROTATION_PREFIX):
                parts.setdefault(whole, []).append(shard)
        for whole, pieces in sorted(parts.items()):
            self.recovered.append(whole + SHARD_SUFFIX)
            if whole + SHARD_SUFFIX in names:
                for piece in pieces:
                    piece.unlink(missing_ok=True)
            else:
                self._merges.put((whole, pieces))

    def add(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            self._begin_rotation()
        assert self._writer is not None
        self._writer.add(row)
        self._rotation_rows += 1
        if self.rotation.every_rows is not None and self._rotation_rows >= self.rotation.every_rows:
            self._end_rotation()

    def tick(self) -> None:
        """Called at least every flush_s: commits the part that is due, ends the rotation that is due, and
        tries again to close a rotation whose last write failed."""
        self._close_unclosed()
        if self._writer is None:
            return
        if self.rotation.every_s is not None and time.monotonic() - self._rotation_started >= self.rotation.every_s:
            self._end_rotation()
            return
        self._guarded(self._writer.flush_if_due)

    def close(self) -> None:
        """Commit every row added, merge the last rotation, wait for every merge, release the directory."""
        try:
            if self._writer is not None:
                self._end_rotation()
            self._close_unclosed()
            self._merges.put(None)
            self._merger.join()
        finally:
            os.close(self._lock_fd)

    def _begin_rotation(self) -> None:
        self._rotation_name = unused_name(self.directory, time.time(), self.shards)
        self._writer = ShardWriter(
            self.directory, CAPTURE_SCHEMA, self._rotation_name, max_rows=PART_MAX_ROWS, max_age_s=self.flush_s
        )
        self._rotation_started = time.monotonic()
        self._rotation_rows = 0
        self.counts.rotations += 1

    def _end_rotation(self) -> None:
        writer, self._writer = self._writer, None
        assert writer is not None
        self.shards.append(self._rotation_name + SHARD_SUFFIX)
        self._unclosed.append((self._rotation_name, writer))
        self._close_unclosed()

    def _close_unclosed(self) -> None:
        """Close the ended rotations' writers (their last rows committed) and queue their merges; a writer
        whose write fails keeps its rows and stays here for the next tick (the directory meanwhile holds
        the rotation's committed parts, a valid log)."""
        still = []
        for name, writer in self._unclosed:
            try:
                writer.close()
            except Exception as exc:
                self.counts.write_failures += 1
                self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"
                still.append((name, writer))
                continue
            self._merges.put((name, list(writer.files)))
        self._unclosed = still

    def _guarded(self, write) -> None:
        """A failed write keeps its rows in the writer (retried at the next flush); counted, remembered."""
        try:
            write()
        except Exception as exc:
            self.counts.write_failures += 1
            self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"

    def _merge_forever(self) -> None:
        while True:
            item = self._merges.get()
            if item is None:
                return
            whole, parts = item
            try:
                merged = merge_parts(self.directory, whole, parts)
                self.counts.merges += 1
                if merged is not None and self.on_merged is not None and merged.name in self.shards:
                    self.on_merged(merged)
            except Exception as exc:  # the parts stay: the directory is still a whole log
                self.counts.write_failures += 1
                self.first_error = self.first_error or f"merging {whole}: {type(exc).__name__}: {exc}"


def unused_name(directory: Path, now: float, also_taken: Collection[str] = ()) -> str:
    """`capture-<UTC time to the millisecond>` at `now`, or at the first millisecond after it that names
    no rotation (merged or in parts) in `directory` nor in `also_taken` (file names), nor a manifest:
    names unique, and in time order when sorted."""
    at_ms = int(now * 1000)
    while True:
        name = f"{ROTATION_PREFIX}{_utc_stamp(at_ms)}"
        merged = f"{name}{SHARD_SUFFIX}"
        if not (
            (directory / merged).exists()
            or merged in also_taken
            or any(directory.glob(f"{name}-*{SHARD_SUFFIX}"))
            or (directory / f"{name}.json").exists()
        ):
            return name
        at_ms += 1


def merge_parts(directory: Path, whole: str, parts: list[Path]) -> Path | None:
    """The rotation's parts as one shard `whole.parquet` (committed atomically), then the parts deleted.
    Row groups of MERGED_ROW_GROUP_ROWS rows; one part in memory at a time."""
    parts = [p for p in parts if p.exists()]
    if not parts:
        return None
    final = directory / f"{whole}{SHARD_SUFFIX}"
    tmp = directory / f".{whole}{SHARD_SUFFIX}.tmp"
    schema = pq.read_schema(parts[0])
    pending: list[pa.Table] = []
    held = 0
    with pq.ParquetWriter(tmp, schema, compression=COMPRESSION, use_dictionary=False) as out:
        for part in parts:
            table = pq.read_table(part).cast(schema)
            pending.append(table)
            held += table.num_rows
            if held >= MERGED_ROW_GROUP_ROWS:
                out.write_table(pa.concat_tables(pending), row_group_size=MERGED_ROW_GROUP_ROWS)
                pending, held = [], 0
        if pending:
            out.write_table(pa.concat_tables(pending), row_group_size=MERGED_ROW_GROUP_ROWS)
    commit_file(tmp, final)
    for part in parts:
        part.unlink(missing_ok=True)
    return final


@dataclass
class CaptureRecorder:
    """Records finished exchanges into `directory` (module docstring). `record` is for the proxy's event
    loop; `start` and `close` for the capture's owner."""

    directory: Path
    listen: str
    upstream: str
    rotation: Rotation = field(default_factory=Rotation)
    flush_s: float = FLUSH_S
    sample: float = 1.0
    redactor: Redactor | None = None
    proxy_counts: ProxyCounts = field(default_factory=ProxyCounts)
    counts: RecorderCounts = field(default_factory=RecorderCounts)
    mirror: CaptureMirror | None = None
    max_queued: int = MAX_QUEUED
    _queue: queue.Queue[CapturedExchange | None] = field(init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _log: CaptureLog | None = field(default=None, init=False)
    _started: float = field(default=0.0, init=False)
    manifest_path: Path = field(default=Path(), init=False)
    _salt: bytes = field(default_factory=lambda: secrets.token_bytes(16), init=False)
    _sampler: random.Random = field(default_factory=random.Random, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.sample <= 1:
            raise CaptureError(f"--sample {self.sample:g}: a fraction in (0, 1]")
        if self.flush_s <= 0:
            raise CaptureError(f"--flush {self.flush_s:g}: must be positive")
        self._queue = queue.Queue(maxsize=self.max_queued)

    @property
    def started(self) -> bool:
        return self._log is not None

    @property
    def started_at(self) -> float:
        """Wall-clock second the capture started (its timeline's epoch: the mirror's `scheduled_s`)."""
        return self._started

    def start(self) -> None:
        self._started = time.time()
        self._log = CaptureLog(self.directory, self.rotation, self.flush_s, self.counts, self._write_mirror_facts)
        name = unused_name(self.directory, self._started)
        self.manifest_path = self.directory / f"{name}.json"
        self._write_manifest()
        self._thread = threading.Thread(target=self._record_forever, name="capture-recorder", daemon=True)
        self._thread.start()

    def admit(self, exchange: CapturedExchange) -> None:
        """A recordable request arrived (the proxy's event loop): whether the capture keeps it
        (`--sample`), decided once, and with `--mirror` handed to the mirror."""
        exchange.sampled = self._sampled(exchange.session_id)
        if exchange.sampled and self.mirror is not None:
            self.mirror.submit(exchange)

    def record(self, exchange: CapturedExchange) -> None:
        """Queue a finished exchange (the proxy's event loop): never waits; a full queue drops it, counted."""
        self.counts.received += 1
        if not exchange.sampled:  # left out by --sample when it arrived: nothing to queue
            self.counts.sampled_out += 1
            return
        try:
            self._queue.put_nowait(exchange)
        except queue.Full:
            self.counts.record_dropped += 1
            return
        self.counts.queue_peak = max(self.counts.queue_peak, self._queue.qsize())

    def close(self) -> None:
        """Record every exchange queued, commit and merge every row, write the final manifest."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        assert self._log is not None
        self._log.close()
        self._write_manifest(stopped=True)

    def _record_forever(self) -> None:
        assert self._log is not None
        log = self._log
        last_manifest = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=min(self.flush_s / 4, 0.25))
            except queue.Empty:
                pass  # nothing came: only the timers below
            else:
                if item is None:
                    return
                self._record_one(log, item)
            log.tick()
            if time.monotonic() - last_manifest >= self.flush_s:
                self._write_manifest()
                last_manifest = time.monotonic()

    def _record_one(self, log: CaptureLog, exchange: CapturedExchange) -> None:
        try:
            row = exchange.row()
        except Exception:  # a bug of ours must not stop the capture; the text may hold personal data
            self.counts.unrecordable += 1
            log.first_error = log.first_error or "exchange.row: " + traceback.format_exc(limit=1).splitlines()[-1]
            return
        if self.redactor is not None:
            self._redact(row, self.redactor)
        log.add(row)
        self.counts.written += 1

    def _sampled(self, session_id: str | None) -> bool:
        """Whether a row is kept at `sample`: by its session where it has one (a conversation is kept
        whole or not at all), else at random."""
        if self.sample >= 1:
            return True
        if session_id is None:
            return self._sampler.random() < self.sample
        digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.sample

    def _redact(self, row: dict[str, Any], redactor: Redactor) -> None:
        row["messages"] = redactor.messages(row["messages"])
        row["prompt"] = redactor.text(row["prompt"])
        row["response_text"] = redactor.text(row["response_text"])
        row["params"] = redactor.messages(row["params"])
        session = row.get("session_id")
        if session is not None and redactor.text(session) != session:
            digest = hashlib.blake2b(session.encode(), key=self._salt, digest_size=8).hexdigest()
            row["session_id"] = f"redacted-{digest}"

    def _write_mirror_facts(self, shard: Path) -> None:
        """LOG_DIR/mirror/requests/<rotation>.parquet (the merge thread, once a rotation is merged): what
        the captured rows say of each request (production's answer, status, timings:
        replay/schemas/shadow_requests.py), on the capture's timeline, for `gate --baseline production`."""
        if self.mirror is None:
            return
        rows = pq.read_table(shard, columns=FACT_COLUMNS).sort_by([("arrival_time", "ascending")])
        facts = self.mirror.run_dir.shadow_requests_dir
        facts.mkdir(parents=True, exist_ok=True)
        write_shadow_requests(shadow_requests(rows, origin_us=int(self._started * 1e6)), facts / shard.name)

    def _write_manifest(self, stopped: bool = False) -> None:
        assert self._log is not None
        now = time.time()
        redactor = self.redactor
        manifest = CaptureManifest(
            started_at=_iso(self._started),
            updated_at=_iso(now),
            stopped_at=_iso(now) if stopped else None,
            clean_stop=stopped,
            listen=self.listen,
            upstream=public_upstream(self.upstream),
            rotate=self.rotation.spec,
            flush_s=self.flush_s,
            sample=self.sample,
            redaction_rules=redactor.names if redactor is not None else [],
            redactions=dict(redactor.counts) if redactor is not None else {},
            tokenizer_guided_redaction=redactor is not None and redactor.count_tokens is not None,
            proxy=asdict(self.proxy_counts),
            recorder=asdict(self.counts),
            shards=list(self._log.shards),
            recovered=list(self._log.recovered),
            first_error=self._log.first_error,
            mirror=None
            if self.mirror is None
            else {"target": self.mirror.target.name, "run_dir": str(self.mirror.run_dir.path)}
            | self.mirror.json_counts(),
        )
        write_text_atomically(self.manifest_path, json.dumps(manifest.model_dump(), indent=2) + "\n")
