"""`shadowreplay capture`: a streaming reverse proxy in front of production's LLM endpoint that records
its traffic as a traffic-log directory (replay/capture/: the proxy, the exchange, redaction, the
recorder). SIGTERM or Ctrl-C stops it: no new connection is taken, the requests in flight finish
(up to --drain) and are recorded, every row is committed and the last rotation merged."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from shadowreplay.errors import UserError
from shadowreplay.replay.capture.mirror import MAX_QUEUED as MIRROR_QUEUE
from shadowreplay.replay.capture.mirror import MIRROR_SLOTS
from shadowreplay.replay.capture.recorder import FLUSH_S

STATUS_EVERY_S = 30.0
MIRROR_DIRNAME = "mirror"
DRAIN_S = 30.0
SWITCH_INTERVAL_S = 0.001
"""The interpreter's GIL switch interval in the capture process (Python's default: 5 ms). The recorder
thread (rows, redaction) shares the GIL with the proxy's event loop; at the default a busy recorder
could hold a response chunk back for up to 5 ms, at 1 ms for at most that (scripts/bench_capture.py)."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "capture",
        help="record production traffic through a streaming proxy into a traffic-log directory",
        description=(
            "Listen on --listen and pass every request to --upstream and every response back unchanged, "
            "streamed chunk by chunk, headers included (the client's key is forwarded, never written). "
            "OpenAI chat and completions and Anthropic Messages exchanges are recorded as traffic-log rows "
            "with production's own TTFT, e2e and status, redacted before they reach the disk, into rotated "
            "Parquet shards in LOG_DIR, each committed atomically: LOG_DIR is a traffic log at every moment "
            "(`inspect`, `replay`, `sweep`, `shadow` and `capacity` take it as they take a log file), and a "
            "crash loses at most the rows of the last --flush. LOG_DIR/capture-<start>.json is the "
            "capture's manifest: counts, redactions per rule, shards. SIGTERM or Ctrl-C drains in-flight "
            "requests (up to --drain), commits every row and stops."
        ),
    )
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="where clients connect")
    parser.add_argument("--upstream", required=True, metavar="URL", help="production's endpoint, e.g. http://vllm:8000")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="LOG_DIR", help="traffic-log directory")
    parser.add_argument(
        "--rotate",
        default="10min",
        metavar="WHEN",
        help="end a shard after a time (10min, 1h) or a number of rows (100k, 1M); default 10min",
    )
    parser.add_argument(
        "--flush",
        default=f"{FLUSH_S:g}s",
        metavar="D",
        help=f"commit recorded rows at least this often (what a crash can lose); default {FLUSH_S:g}s",
    )
    parser.add_argument(
        "--redact",
        default="builtin",
        metavar="RULES.yaml|builtin|none",
        help="redaction rules: a rules file, every built-in rule (default), or none",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        metavar="DIR",
        help="a Hugging Face tokenizer directory: redacted text keeps each match's token count",
    )
    parser.add_argument(
        "--sample", type=float, default=1.0, metavar="F", help="record this fraction, by session (default 1)"
    )
    parser.add_argument("--session-header", default="x-session-id", metavar="H", help="session id header")
    parser.add_argument("--session-field", default="user", metavar="F", help="session id body field (dotted)")
    parser.add_argument("--tag-header", default="x-shadowreplay-tag", metavar="H", help="tag header")
    parser.add_argument("--tag-field", metavar="F", help="tag body field (dotted)")
    parser.add_argument("--tag-from-path", action="store_true", help="without a tag header or field: the path")
    parser.add_argument(
        "--mirror",
        type=Path,
        metavar="C.yaml",
        help="also send each kept request to this candidate target (a running endpoint); its result rows go to "
        "LOG_DIR/mirror/ for `shadowreplay gate LOG_DIR/mirror --baseline production --candidate NAME`",
    )
    parser.add_argument(
        "--mirror-slots",
        type=int,
        default=MIRROR_SLOTS,
        metavar="N",
        help=f"requests in flight to the candidate, at most (default {MIRROR_SLOTS})",
    )
    parser.add_argument(
        "--mirror-queue",
        type=int,
        default=MIRROR_QUEUE,
        metavar="N",
        help=f"requests waiting for the candidate, at most; beyond, dropped and counted (default {MIRROR_QUEUE})",
    )
    parser.add_argument(
        "--drain",
        default=f"{DRAIN_S:g}s",
        metavar="D",
        help=f"on SIGTERM, wait for in-flight requests (default {DRAIN_S:g}s)",
    )
    parser.set_defaults(func=run)


def _loop_factory():
    """uvloop's event loop where it is installed (as in the replay workers), else asyncio's."""
    try:
        from uvloop import new_event_loop
    except ImportError:  # pragma: no cover - depends on the platform
        return None
    return new_event_loop


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def check_upstream(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--upstream {url!r}: expected an http:// or https:// URL with a host")
    return url


def _redactor(args: argparse.Namespace):
    from shadowreplay.replay.capture.redaction import Redactor

    if args.redact == "none" and args.tokenizer is not None:
        raise UserError("--tokenizer guides redaction; with --redact none there is none")
    count_tokens = None
    if args.tokenizer is not None:
        from shadowreplay.replay.requests.prompt_synthesis import load_hf_tokenizer

        tokenizer = load_hf_tokenizer(args.tokenizer)

        def count_tokens(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False))

    if args.redact == "none":
        return None
    if args.redact == "builtin":
        return Redactor.builtin(count_tokens=count_tokens)
    return Redactor.from_file(Path(args.redact), count_tokens=count_tokens)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from shadowreplay.replay.capture.exchange import CaptureFields
    from shadowreplay.replay.capture.proxy import CaptureProxy, ProxyCounts
    from shadowreplay.replay.capture.recorder import CaptureRecorder, Rotation
    from shadowreplay.replay.config_files import validation_problems
    from shadowreplay.replay.schemas.durations import parse_duration_s

    host, port = parse_listen(args.listen)
    upstream = check_upstream(args.upstream)
    if args.output.exists() and not args.output.is_dir():
        raise UserError(f"{args.output}: not a directory (capture writes a traffic-log directory)")
    try:
        fields = CaptureFields(
            session_header=args.session_header or None,
            session_field=args.session_field or None,
            tag_header=args.tag_header or None,
            tag_field=args.tag_field,
            tag_from_path=args.tag_from_path,
        )
    except ValidationError as exc:
        raise UserError(f"capture fields: {validation_problems(exc)}") from None
    redactor = _redactor(args)
    mirror_target = _mirror_target(args.mirror, args.output) if args.mirror is not None else None
    if args.mirror_slots < 1 or args.mirror_queue < 1:
        raise UserError("--mirror-slots and --mirror-queue must be positive")
    counts = ProxyCounts()
    recorder = CaptureRecorder(
        directory=args.output,
        listen=f"{host}:{port}",
        upstream=upstream,
        rotation=Rotation.parse(args.rotate),
        flush_s=parse_duration_s(args.flush, "--flush"),
        sample=args.sample,
        redactor=redactor,
        proxy_counts=counts,
    )
    proxy = CaptureProxy(upstream, recorder.record, fields, admit=recorder.admit, counts=counts)
    drain_s = parse_duration_s(args.drain, "--drain")
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            drained = runner.run(_serve(proxy, host, port, drain_s, recorder, mirror_target, args))
    finally:
        if recorder.started:
            recorder.close()
    _say(f"stopped: {_status(recorder)}; manifest {recorder.manifest_path}")
    if not drained:
        _say(f"WARNING {counts.in_flight} requests were still in flight after --drain {drain_s:g} s: not recorded")
    if recorder.counts.record_dropped or recorder.counts.write_failures:
        _say(
            f"WARNING {recorder.counts.record_dropped:,} records dropped (the recorder fell behind), "
            f"{recorder.counts.write_failures} failed writes; see the manifest's first_error"
        )
        return 1
    return 0


def _mirror_target(path: Path, log_dir: Path):
    """The --mirror target, checked: a running endpoint, its key readable, no earlier mirror in LOG_DIR."""
    from shadowreplay.replay.schemas.run_dir import RunDir
    from shadowreplay.replay.targets.config import load_target

    target = load_target(path)
    if not target.base_url:
        raise UserError(f"{path}: --mirror sends to a running endpoint; give the target a base_url")
    target.api_key()
    earlier = RunDir(log_dir / MIRROR_DIRNAME)
    if earlier.result_shards():
        raise UserError(f"{earlier.path}: holds an earlier capture's mirror; capture into a new LOG_DIR or move it")
    return target


async def _serve(
    proxy, host: str, port: int, drain_s: float, recorder, mirror_target, args: argparse.Namespace
) -> bool:
    from aiohttp import web

    from shadowreplay.replay.capture.mirror import CaptureMirror
    from shadowreplay.replay.capture.redaction import Redactor

    runner = web.AppRunner(proxy.app(), handle_signals=False, shutdown_timeout=drain_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(f"--listen {host}:{port}: {exc.strerror or exc}") from None
    mirror = None
    try:
        recorder.start()  # once listening: a capture that cannot listen writes nothing
        if mirror_target is not None:  # started before the loop takes a connection (no await before it)
            own = recorder.redactor
            mirror = CaptureMirror(
                mirror_target,
                args.output / MIRROR_DIRNAME,
                redactor=Redactor(list(own.rules), count_tokens=own.count_tokens) if own is not None else None,
                epoch=recorder.started_at,
                log_dir=args.output,
                slots=args.mirror_slots,
                max_queued=args.mirror_queue,
            )
            await mirror.start()
            recorder.mirror = mirror
    except BaseException:
        await runner.cleanup()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    redaction = (
        "no redaction (personal data is written as sent)"
        if recorder.redactor is None
        else (f"redacting {', '.join(recorder.redactor.names)}")
    )
    _say(
        f"listening on http://{host}:{port}, upstream {proxy.upstream}, writing {args.output} "
        f"(rotate {recorder.rotation.spec}, flush {recorder.flush_s:g}s, {redaction})"
    )
    started = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), STATUS_EVERY_S)
        except TimeoutError:
            _say(f"{time.monotonic() - started:,.0f} s: {_status(recorder)}")
    _say(f"stopping: draining {proxy.counts.in_flight} requests in flight (up to {drain_s:g} s)")
    await site.stop()  # no new connection; requests in flight go on
    drained = await proxy.drain(drain_s)
    if mirror is not None:
        _say(f"stopping: the mirror's {mirror.in_flight} requests in flight (up to {drain_s:g} s)")
        await mirror.close(drain_s)
    await runner.cleanup()
    return drained


def _status(recorder) -> str:
    proxy, rec = recorder.proxy_counts, recorder.counts
    redactions = sum(recorder.redactor.counts.values()) if recorder.redactor is not None else 0
    status = (
        f"{proxy.requests:,} requests, {rec.written:,} rows recorded, {rec.sampled_out:,} sampled out, "
        f"{rec.record_dropped:,} dropped, {redactions:,} redactions, {proxy.upstream_unavailable:,} upstream "
        f"unavailable, {proxy.upstream_lost + proxy.client_closed:,} cut"
    )
    mirror = recorder.mirror
    if mirror is not None:
        by_status = ", ".join(f"{n:,} {s}" for s, n in sorted(mirror.counts.by_status.items())) or "none done"
        status += f"; mirror: {mirror.counts.sent:,} sent ({by_status}), {mirror.counts.dropped:,} dropped"
    return status


def _say(text: str) -> None:
    print(f"capture: {text}", file=sys.stderr, flush=True)
