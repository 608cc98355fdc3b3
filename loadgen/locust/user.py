"""A Locust user for OpenAI-compatible streaming targets: interactive load tests with our metrics.

Run it with `shadowreplay locust` (shadowreplay/verbs/locust.py), or directly:
`locust -f loadgen/locust/user.py --target-file T.yaml --run-dir RUN_DIR [--traffic-log LOG.parquet]`.
Importing this module imports Locust, which monkey-patches the standard library for gevent: only
Locust itself should import it (the verb locates the file without importing it).

Each task of `OpenAIStreamingUser` sends one request, drawn from a traffic log's own prompt/output
mix or built from synthesized lengths (loadgen/locust/request_mix.py), streamed and parsed with our wire
protocol and SSE parser (loadgen/locust/gevent_stream_client.py), and

- reports to Locust's statistics, request type `SSE`: `ttft` (response time = time to first output
  token, one sample per successful request), `itl` (one sample per gap between consecutive output
  tokens, so its request count is a count of gaps) and `e2e` (send to last token; failures are
  reported here, one per failed request, grouped by our status: `http_error (HTTP 503)`,
  `timeout`, `connection_error`, `stream_error`; its size column holds output tokens, not bytes).
  Requests cut off by Locust stopping a user are recorded, not reported.
- writes one result row per attempt (replay/schemas/results.py RESULTS_SCHEMA, through
  replay/run/result_rows.py) to RUN_DIR/results via ShardWriter, one shard series per Locust
  process, so `shadowreplay report RUN_DIR` works on a Locust run. The target's retry policy
  applies, as in a replay.

Users run closed loop (`wait_time = constant(0)`: the next request when the previous one is done;
subclass and set `wait_time` for think time). A request is scheduled when its user draws it, so
`scheduled_s` is that moment and lateness measures only the load generator.

One Locust session is one run: one `run_id` and one time axis (`epoch`, the wall-clock second the
first test started), set by the master (or the single local process) and passed to workers in
Locust's spawn messages with the other custom options. Tests started again from the web UI add
rows to the same run directory. The master (or local process) writes RUN_DIR/manifest.json at each
test start and when Locust quits (with Locust's own totals). The API key is read from the
variable or file the target names, goes into a request header only, and never into logs, rows or
the manifest.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import gevent
import locust
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.exception import StopTest
from locust.runners import MasterRunner, WorkerRunner

from shadowreplay.errors import ShadowReplayError
from shadowreplay.loadgen.locust.gevent_stream_client import GeventStreamingClient, StreamCancelled, client_pool
from shadowreplay.loadgen.locust.request_mix import RequestMix, SynthesizedLengths
from shadowreplay.replay.clients.stream_client import ERROR_TEXT_LIMIT
from shadowreplay.replay.clock import ClockMapping
from shadowreplay.replay.requests.builder import RequestBuilder
from shadowreplay.replay.run.plan import OUTPUT_LENGTHS, LengthClamp, PlanError
from shadowreplay.replay.run.result_rows import result_row
from shadowreplay.replay.schemas.manifest import Manifest
from shadowreplay.replay.schemas.results import StreamOutcome
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.schemas.shards import ShardWriter
from shadowreplay.replay.schemas.traffic_log import TrafficLogError
from shadowreplay.replay.secrets import Scrubber
from shadowreplay.replay.targets.config import TargetConfig, TargetConfigError, load_target

logger = logging.getLogger("shadowreplay.locust")

REQUEST_TYPE = "SSE"
TTFT_ENTRY = "ttft"
ITL_ENTRY = "itl"
E2E_ENTRY = "e2e"
DEFAULT_PROMPT_TOKENS = 256
DEFAULT_COMPLETION_TOKENS = 128
FLUSH_CHECK_S = 1.0


class LocustSetupError(ShadowReplayError, ValueError):
    """Options or files that a Locust run cannot start with; the message names the file or option."""


class StreamFailure(Exception):
    """A failed request as Locust's failure table shows it: our status (and the HTTP status)."""


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    """Locust custom options (also settable by environment variable; passed on to workers)."""
    parser.add_argument(
        "--target-file",
        env_var="SHADOWREPLAY_TARGET",
        default="",
        include_in_web_ui=False,
        help="shadowreplay target YAML (docs/DESIGN.md, Target config)",
    )
    parser.add_argument(
        "--run-dir",
        env_var="SHADOWREPLAY_RUN_DIR",
        default="",
        include_in_web_ui=False,
        help="run directory for result rows (RUN_DIR/results) and manifest.json",
    )
    parser.add_argument(
        "--traffic-log",
        env_var="SHADOWREPLAY_TRAFFIC_LOG",
        default="",
        include_in_web_ui=False,
        help="traffic log (Parquet) whose rows are drawn at random; without it, synthesized lengths",
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=DEFAULT_PROMPT_TOKENS,
        include_in_web_ui=False,
        help="without --traffic-log: prompt length in the target's tokens (needs its tokenizer)",
    )
    parser.add_argument(
        "--completion-tokens",
        type=int,
        default=DEFAULT_COMPLETION_TOKENS,
        include_in_web_ui=False,
        help="without --traffic-log: output tokens asked for",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=0,
        include_in_web_ui=False,
        help="clamp the log's synthesized prompt lengths (0: no clamp)",
    )
    parser.add_argument(
        "--max-completion-tokens",
        type=int,
        default=0,
        include_in_web_ui=False,
        help="clamp the log's output lengths (0: no clamp)",
    )
    parser.add_argument(
        "--output-lengths",
        choices=OUTPUT_LENGTHS,
        default="recorded",
        include_in_web_ui=False,
        help="the log's rows: recorded (exactly their completion_tokens) or natural (the model ends its answer)",
    )
    parser.add_argument(
        "--keep-output-text",
        action="store_true",
        default=False,
        include_in_web_ui=False,
        help="keep answer texts in the result rows",
    )
    parser.add_argument(
        "--mix-seed",
        type=int,
        default=0,
        include_in_web_ui=False,
        help="seed of the random draws from the traffic log (per process)",
    )
    parser.add_argument(
        "--target-base-url",
        default="",
        include_in_web_ui=False,
        help="base URL overriding the target file's (set by `shadowreplay locust` for kind vllm)",
    )
    parser.add_argument(
        "--run-id",
        env_var="SHADOWREPLAY_RUN_ID",
        default="",
        include_in_web_ui=False,
        help="run id of the result rows (default: made when the first test starts)",
    )
    parser.add_argument(
        "--run-epoch",
        type=float,
        default=0.0,
        include_in_web_ui=False,
        help="wall-clock second of the run's time axis (default: when the first test starts)",
    )


@dataclass(frozen=True)
class RunOptions:
    """The shadowreplay options of a Locust process, checked."""

    target_file: Path
    run_dir: Path
    traffic_log: Path | None
    lengths: SynthesizedLengths
    clamp: LengthClamp
    keep_output_text: bool
    mix_seed: int
    base_url: str | None

    @classmethod
    def from_parsed(cls, parsed: Namespace) -> RunOptions:
        if not parsed.target_file:
            raise LocustSetupError("--target-file (or $SHADOWREPLAY_TARGET) is required: the target YAML")
        if not parsed.run_dir:
            raise LocustSetupError("--run-dir (or $SHADOWREPLAY_RUN_DIR) is required: where result rows go")
        try:
            lengths = SynthesizedLengths(parsed.prompt_tokens, parsed.completion_tokens)
        except ValueError as exc:
            raise LocustSetupError(f"--prompt-tokens/--completion-tokens: {exc}") from None
        return cls(
            target_file=Path(parsed.target_file),
            run_dir=Path(parsed.run_dir),
            traffic_log=Path(parsed.traffic_log) if parsed.traffic_log else None,
            lengths=lengths,
            clamp=LengthClamp(
                parsed.max_prompt_tokens or None, parsed.max_completion_tokens or None, parsed.output_lengths
            ),
            keep_output_text=bool(parsed.keep_output_text),
            mix_seed=int(parsed.mix_seed),
            base_url=parsed.target_base_url or None,
        )

    def load_target(self) -> TargetConfig:
        """The target, with the base URL override applied; its API key must be readable."""
        try:
            target = load_target(self.target_file)
            if self.base_url:
                target = target.model_copy(update={"base_url": self.base_url.rstrip("/")})
            if not target.base_url:
                raise LocustSetupError(
                    f"{self.target_file}: target {target.name} has no base_url (kind {target.kind}: start it with "
                    "`shadowreplay locust`, or pass --target-base-url)"
                )
            target.api_key()  # a missing key variable or file fails here, not on every request
        except TargetConfigError as exc:
            raise LocustSetupError(str(exc)) from None
        return target

    def load_mix(self, target: TargetConfig) -> RequestMix:
        """The requests to draw from; synthesized prompts need the target's tokenizer."""
        try:
            if self.traffic_log:
                mix = RequestMix.from_log(self.traffic_log, self.clamp)
            else:
                mix = RequestMix.synthesized(self.lengths)
        except (TrafficLogError, PlanError) as exc:
            raise LocustSetupError(str(exc)) from None
        if mix.needs_tokenizer and not target.tokenizer:
            if self.traffic_log:
                source = f"rows of {self.traffic_log} have no text"
            else:
                source = "without --traffic-log, prompts are synthesized"
            raise LocustSetupError(f"{source}: set `tokenizer` in {self.target_file} to synthesize them")
        return mix


class ResultRecorder:
    """What one Locust process that runs users needs for every request: the target, the request
    mix, the request builder, the run's clock, and the result writer; and how an outcome is
    recorded (a result row) and reported (Locust statistics)."""

    def __init__(self, environment: Environment, options: RunOptions):
        """Load the target, the request mix and the tokenizer (seconds, so before a test starts)."""
        self.environment = environment
        self.options = options
        self.target = options.load_target()
        self.mix = options.load_mix(self.target)
        self.builder = RequestBuilder(self.target)
        self.builder.prepare()  # load the tokenizer now, not on the first request
        self.token_counter = self.builder.count_tokens if self.target.tokenizer else None
        self.worker = f"locust-{socket.gethostname()}-{os.getpid()}"
        self.rng = random.Random(f"{options.mix_seed}-{self.worker}")
        self.run_id: str | None = None
        self.clock: ClockMapping | None = None
        self.writer: ShardWriter | None = None
        self._flusher: gevent.Greenlet | None = None
        self._sequence = 0

    def begin(self, run_id: str, epoch: float) -> None:
        """Join the run (at a test's start; later tests of the session keep their run)."""
        if self.run_id == run_id:
            return
        self.close()
        self.run_id = run_id
        self.clock = ClockMapping(ClockMapping.measure_wall_minus_perf(), epoch)
        self.writer = RunDir(self.options.run_dir).result_writer(self.worker)
        self._flusher = gevent.spawn(self._flush_periodically)
        logger.info(
            "shadowreplay: %s: requests from %s; result rows to %s (run %s)",
            self.worker,
            self.mix.description,
            self.writer.directory,
            run_id,
        )

    def draw(self) -> dict:
        """The next request as a plan row, scheduled now, with a request id unique in the run."""
        assert self.clock is not None, "begin() first"
        self._sequence += 1
        scheduled_s = self.clock.to_run_s(time.perf_counter())
        return self.mix.draw(self.rng, f"{self.worker}-{self._sequence:07d}", scheduled_s)

    def record(self, row: dict, outcome: StreamOutcome, attempt: int, final: bool) -> None:
        assert self.writer is not None and self.run_id is not None and self.clock is not None, "begin() first"
        self.writer.add(
            result_row(
                run_id=self.run_id,
                target=self.target.name,
                worker=self.worker,
                row=row,
                outcome=outcome,
                attempt=attempt,
                final=final,
                to_run_s=self.clock.to_run_s,
                keep_output_text=self.options.keep_output_text,
            )
        )

    def report(self, outcome: StreamOutcome) -> None:
        """Locust statistics for one attempt: ttft, itl and e2e when it succeeded, else one e2e failure."""
        fire = self.environment.events.request.fire
        if outcome.status == "ok":
            sent = outcome.sent
            assert sent is not None  # an attempt that succeeded was sent
            times = outcome.token_times
            if times:
                fire(
                    request_type=REQUEST_TYPE,
                    name=TTFT_ENTRY,
                    response_time=(times[0] - sent) * 1000.0,
                    response_length=0,
                    exception=None,
                    context={},
                )
            for previous, current in zip(times, times[1:]):
                fire(
                    request_type=REQUEST_TYPE,
                    name=ITL_ENTRY,
                    response_time=(current - previous) * 1000.0,
                    response_length=0,
                    exception=None,
                    context={},
                )
            end = times[-1] if times else outcome.done
            assert end is not None  # a finished attempt has its end time
            fire(
                request_type=REQUEST_TYPE,
                name=E2E_ENTRY,
                response_time=(end - sent) * 1000.0,
                response_length=outcome.completion_tokens or len(times),
                exception=None,
                context={},
            )
            return
        label = outcome.status
        if outcome.http_status is not None and outcome.http_status >= 300:
            label += f" (HTTP {outcome.http_status})"
        sent, done = outcome.sent, outcome.done
        elapsed_ms = (done - sent) * 1000.0 if sent is not None and done is not None else 0.0
        fire(
            request_type=REQUEST_TYPE,
            name=E2E_ENTRY,
            response_time=elapsed_ms,
            response_length=0,
            exception=StreamFailure(label),
            context={},
        )

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.kill(block=False)
        if self.writer is not None:
            self.writer.close()

    def _flush_periodically(self) -> None:
        while True:
            gevent.sleep(FLUSH_CHECK_S)
            assert self.writer is not None  # begin() sets it before it spawns this greenlet
            self.writer.flush_if_due()


_recorder: ResultRecorder | None = None  # in a process that runs users, from init (or its first test) on


class OpenAIStreamingUser(FastHttpUser):
    """One interactive user of an OpenAI-compatible streaming target (chat or completions).

    A FastHttpUser: geventhttpclient costs a fraction of python-requests' CPU per request (the load
    generator's CPU is what limits a Locust process), and its responses can be read a line at a
    time as lines arrive, which per-token timing needs. The streamed POST goes through the user's
    geventhttpclient pool (`client_pool`, shared with `self.client`) and is reported by this class
    as ttft/itl/e2e, not by `self.client`, which would add its own time-to-headers entry per request.
    """

    wait_time = constant(0)

    def __init__(self, environment: Environment):
        recorder = _recorder
        if recorder is None or recorder.writer is None:
            raise StopTest("shadowreplay: this Locust process has no target loaded (see the error above)")
        self.recorder = recorder
        self.host = recorder.target.base_url
        self.client_pool = client_pool(recorder.target)
        super().__init__(environment)
        self.stream_client = GeventStreamingClient(
            self.client_pool,
            recorder.target,
            token_counter=recorder.token_counter,
            keep_output_text=recorder.options.keep_output_text,
        )

    @task
    def stream_one_request(self) -> None:
        """Send one drawn request (with the target's retries); one result row per attempt."""
        recorder = self.recorder
        row = recorder.draw()
        try:
            built = recorder.builder.build(row)
        except Exception as exc:  # a row the target cannot take: its own row, never a crash
            error = self.stream_client.scrubber.cut(f"request not built: {exc}", ERROR_TEXT_LIMIT)
            outcome = StreamOutcome(status="http_error", error=error)
            recorder.record(row, outcome, 1, final=True)
            recorder.report(outcome)
            return
        row = built.recorded_row(row)
        attempt = 1
        try:
            while True:
                outcome = self.stream_client.send(built.body)
                delay = recorder.target.retry.delay_before_retry(outcome, attempt)
                recorder.record(row, outcome, attempt, final=delay is None)
                recorder.report(outcome)
                if delay is None:
                    return
                attempt += 1
                gevent.sleep(delay)
        except StreamCancelled as cancelled:
            recorder.record(row, cancelled.outcome, attempt, final=True)
            raise
        except gevent.GreenletExit:  # stopped while waiting to retry
            stopped = StreamOutcome(status="cancelled", error="user stopped before this attempt")
            recorder.record(row, stopped, attempt, final=True)
            raise


def _parsed_options(environment: Environment) -> Namespace:
    """Locust's parsed command line, with our options (every process Locust starts from its command line has it)."""
    parsed = environment.parsed_options
    assert parsed is not None, "Locust started without a parsed command line"
    return parsed


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs) -> None:
    """Check options and files, and load the target, request mix and tokenizer, before any test
    starts: a mistake is one line and an exit (not a failure per request), and the seconds a
    tokenizer takes to load do not eat into the first test."""
    global _recorder
    parsed = _parsed_options(environment)
    if isinstance(environment.runner, WorkerRunner):
        if parsed.target_file:  # forked by --processes, or started with the same options as the master
            try:
                _recorder = ResultRecorder(environment, RunOptions.from_parsed(parsed))
            except LocustSetupError as exc:
                logger.warning("shadowreplay locust: %s (trying again with the master's options at test start)", exc)
    else:
        try:
            options = RunOptions.from_parsed(parsed)
            if isinstance(environment.runner, MasterRunner):
                target = options.load_target()
                options.load_mix(target)  # checked here; each worker loads its own
            else:
                _recorder = ResultRecorder(environment, options)
                target = _recorder.target
        except LocustSetupError as exc:
            raise SystemExit(f"shadowreplay locust: {exc}") from None
        if RunDir(options.run_dir).has_results():
            raise SystemExit(
                f"shadowreplay locust: {options.run_dir} already holds results; choose a new run directory"
            )
        if not environment.host:
            environment.host = target.base_url  # what the web UI shows; requests go to the target's base_url
    # This work blocked for seconds before gevent's loop ran; the loop's cached clock is that old,
    # and Locust's --run-time timer, set next, would fire that much early.
    gevent.get_hub().loop.update_now()


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs) -> None:
    global _recorder
    parsed = _parsed_options(environment)
    if not isinstance(environment.runner, WorkerRunner):
        # The run's identity, made once per Locust session; spawn messages carry it to workers.
        parsed.run_id = parsed.run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        parsed.run_epoch = parsed.run_epoch or time.time()
        _write_manifest(environment, final=False)
    if isinstance(environment.runner, MasterRunner):
        return
    if _recorder is None:
        try:
            _recorder = ResultRecorder(environment, RunOptions.from_parsed(parsed))
        except LocustSetupError as exc:
            logger.error("shadowreplay locust: %s", exc)
            return
    _recorder.begin(parsed.run_id, parsed.run_epoch)


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kwargs) -> None:
    if _recorder is not None:
        _recorder.flush()


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kwargs) -> None:
    if _recorder is not None:
        _recorder.close()
    if not isinstance(environment.runner, WorkerRunner) and _parsed_options(environment).run_id:
        _write_manifest(environment, final=True)


def _write_manifest(environment: Environment, final: bool) -> None:
    """RUN_DIR/manifest.json: the run's identity, target (no secrets), request mix, Locust settings
    and, when Locust quits, Locust's own totals per entry."""
    parsed = _parsed_options(environment)
    options = RunOptions.from_parsed(parsed)
    target = options.load_target()
    manifest = Manifest(
        run_id=parsed.run_id,
        epoch=parsed.run_epoch,
        started_at=parsed.run_epoch,
        load_generator={
            "tool": "locust",
            "locust_version": locust.__version__,
            "user_class": OpenAIStreamingUser.__name__,
            "users": parsed.num_users,
            "spawn_rate": parsed.spawn_rate,
            "run_time": parsed.run_time,
            "processes": parsed.processes,
            "headless": parsed.headless,
            "closed_loop": True,
        },
        request_mix={
            "traffic_log": str(options.traffic_log) if options.traffic_log else None,
            "prompt_tokens": None if options.traffic_log else options.lengths.prompt_tokens,
            "completion_tokens": None if options.traffic_log else options.lengths.completion_tokens,
            "max_prompt_tokens": options.clamp.max_prompt_tokens,
            "max_completion_tokens": options.clamp.max_completion_tokens,
            "output_lengths": options.clamp.output_lengths if options.traffic_log else "recorded",
            "seed": options.mix_seed,
        },
        targets=[target.public_dict()],
    )
    if final:
        manifest.ended_at = time.time()
        manifest.locust_stats = {
            entry.name: {
                "requests": entry.num_requests,
                "failures": entry.num_failures,
                "median_ms": entry.median_response_time,
                "p95_ms": entry.get_response_time_percentile(0.95),
            }
            for entry in environment.stats.entries.values()
        }
    RunDir(options.run_dir).write_manifest(manifest, Scrubber([target.api_key()]))
