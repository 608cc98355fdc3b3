"""`shadowreplay locust`: an interactive load test with Locust and our streaming user.

Starts Locust (`python -m locust`) on loadgen/locust/user.py, which reports TTFT, ITL and e2e into
Locust's statistics and writes our result rows to RUN_DIR, so `shadowreplay report RUN_DIR` works
on the run. The locustfile is located, never imported here: importing Locust monkey-patches the
standard library for gevent.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

from shadowreplay.errors import UserError
from shadowreplay.verbs.length_options import add_length_options

WEB_HOST = "127.0.0.1"
LOCUST_STOP_WAIT_S = 30.0  # after Ctrl-C, how long Locust gets to stop its users and write its files


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "locust",
        help="interactive load test of one target with Locust (web UI or headless), writing our result rows",
        description=(
            "Start Locust with shadowreplay's streaming user (loadgen/locust/user.py) against the target of "
            "--target: each user sends one request after another (closed loop), drawn at random from LOG's own "
            "prompt/output mix, or with synthesized lengths (--prompt-tokens/--completion-tokens, which need "
            "the target's tokenizer) without --log. Locust's statistics show `ttft` (time to first token), "
            "`itl` (one sample per gap between output tokens) and `e2e` (send to last token, with failures "
            "grouped by status: http_error, timeout, connection_error, stream_error). One result row per "
            "request attempt goes to RUN_DIR/results, and RUN_DIR/manifest.json describes the run: "
            "`shadowreplay report RUN_DIR` summarizes it. Without --headless, Locust's web UI is served on "
            f"http://{WEB_HOST}:PORT only; start and stop tests there (every test of the session adds rows "
            "to RUN_DIR). A kind vllm target is started first and stopped at the end."
        ),
        epilog=(
            "Arguments after `--` go to Locust unchanged, e.g. `-- --csv RUN_DIR/locust --stop-timeout 10`. "
            "The exit status is Locust's (1 when a request failed, unless `-- --exit-code-on-error 0`)."
        ),
    )
    parser.add_argument("--target", required=True, type=Path, metavar="T.yaml", help="the target to load")
    parser.add_argument("--log", type=Path, metavar="LOG.parquet", help="traffic log whose rows are drawn at random")
    parser.add_argument(
        "-o", "--output", required=True, type=Path, metavar="RUN_DIR", help="run directory for result rows"
    )
    parser.add_argument(
        "--headless", action="store_true", help="no web UI: run -u users for -t, print Locust's summary"
    )
    parser.add_argument("-u", "--users", type=int, metavar="N", help="peak number of concurrent users (Locust -u)")
    parser.add_argument("-r", "--spawn-rate", type=float, metavar="R", help="users started per second (Locust -r)")
    parser.add_argument(
        "-t", "--run-time", metavar="D", help="stop after D, e.g. 30s, 5m, 1h30m (Locust -t; with --headless)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="Locust worker processes under one master (Locust --processes; -1: one per core)",
    )
    parser.add_argument(
        "--web-port", type=int, default=8089, metavar="PORT", help="web UI port on 127.0.0.1 (default 8089)"
    )
    parser.add_argument(
        "--csv", metavar="PREFIX", help="Locust's CSV statistics: PREFIX_stats.csv, PREFIX_failures.csv, ..."
    )
    parser.add_argument(
        "--prompt-tokens", type=int, default=256, metavar="P", help="without --log: prompt tokens (default 256)"
    )
    parser.add_argument(
        "--completion-tokens", type=int, default=128, metavar="C", help="without --log: output tokens (default 128)"
    )
    add_length_options(parser)  # for the log's rows; --prompt-tokens/--completion-tokens are always exact
    parser.add_argument("--keep-output-text", action="store_true", help="keep answer texts in the result rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws from the log (default 0)")
    parser.add_argument("locust_args", nargs="*", metavar="-- LOCUST_ARG", help="further Locust arguments, after `--`")
    parser.set_defaults(func=run)


def locustfile() -> Path:
    """Where loadgen/locust/user.py is, found without importing it (that would import Locust)."""
    spec = importlib.util.find_spec("shadowreplay.loadgen.locust.user")
    if spec is None or spec.origin is None:
        raise UserError("loadgen/locust/user.py is not importable; is shadowreplay installed?")
    return Path(spec.origin)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the Locust master's worker port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((WEB_HOST, 0))
        return sock.getsockname()[1]


def locust_command(args: argparse.Namespace, base_url: str | None) -> list[str]:
    """The Locust command line for `args` (everything bound to 127.0.0.1)."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile()),
        "--target-file",
        str(args.target),
        "--run-dir",
        str(args.output),
        "--prompt-tokens",
        str(args.prompt_tokens),
        "--completion-tokens",
        str(args.completion_tokens),
        "--mix-seed",
        str(args.seed),
    ]
    if args.log:
        command += ["--traffic-log", str(args.log)]
    if base_url:
        command += ["--target-base-url", base_url]
    if args.max_prompt_tokens:
        command += ["--max-prompt-tokens", str(args.max_prompt_tokens)]
    if args.max_completion_tokens:
        command += ["--max-completion-tokens", str(args.max_completion_tokens)]
    command += ["--output-lengths", args.output_lengths]
    if args.keep_output_text:
        command.append("--keep-output-text")
    if args.headless:
        command.append("--headless")
    else:
        command += ["--web-host", WEB_HOST, "--web-port", str(args.web_port)]
    for flag, value in (("-u", args.users), ("-r", args.spawn_rate), ("-t", args.run_time), ("--csv", args.csv)):
        if value is not None:
            command += [flag, str(value)]
    if args.processes:
        port = free_port()
        command += [
            "--processes",
            str(args.processes),
            "--master-bind-host",
            WEB_HOST,
            "--master-bind-port",
            str(port),
            "--master-host",
            WEB_HOST,
            "--master-port",
            str(port),
        ]
    return command + list(args.locust_args)


def _check_inputs(args: argparse.Namespace):
    """The target, checked, and the log's schema; one clear line for each mistake."""
    from shadowreplay.replay.schemas.traffic_log import open_traffic_log
    from shadowreplay.replay.targets.config import load_target

    target = load_target(args.target)
    target.api_key()
    if target.replica_count > 1:
        raise UserError(
            f"{args.target}: is {target.replica_count} replicas; Locust drives one base URL "
            "(`shadowreplay replay` and `sweep` balance over replicas)"
        )
    if args.log:
        open_traffic_log(args.log)
    if not args.log and not target.tokenizer:
        raise UserError(f"{args.target}: without --log, prompts are synthesized and need the target's `tokenizer`")
    if args.run_time and not args.headless:
        raise UserError("-t/--run-time needs --headless (in the web UI, stop the test there)")
    if args.processes is not None and args.processes == 0:
        raise UserError("--processes must be positive, or -1 for one per core")
    return target


def run(args: argparse.Namespace) -> int:
    from shadowreplay.replay.run.session import Session
    from shadowreplay.replay.schemas.run_dir import RunDir

    target = _check_inputs(args)
    run_dir = RunDir(args.output).create_new()
    # Locust's own process writes the manifest; the session starts and stops the vLLM server (no
    # Ray: Locust brings its own processes) and adds the server and the outcome to that manifest.
    with Session([target], run_dir, use_ray=False, external_manifest=True) as session:
        (live,) = session.targets
        command = locust_command(args, live.base_url if target.kind == "vllm" else None)
        code = _run_locust(command, session.placement.loadgen_cpus)
    results = run_dir.result_shards()
    if results:
        print(
            f"shadowreplay locust: {len(results)} result shard(s) in {run_dir.results_dir}; "
            f"summarize with `shadowreplay report {args.output}`",
            file=sys.stderr,
        )
    else:
        print("shadowreplay locust: no result rows were written (no test ran?)", file=sys.stderr)
    return code


def _run_locust(command: list[str], cpus: list[int] | None = None) -> int:
    """Run Locust in the foreground (on `cpus`, off a local server's, where given: its worker
    processes inherit them); Ctrl-C reaches it too (same process group), and it is waited for while
    it stops its users and writes its files."""
    process = subprocess.Popen(command, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    try:
        return process.wait()
    except KeyboardInterrupt:
        try:
            return process.wait(timeout=LOCUST_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=10)
            raise
