"""Pre-flight checks of the targets, in the driver, before any request is scheduled.

A run whose target cannot be reached, or whose tokenizer cannot be loaded, fails otherwise late and
loudly: every row `connection_error` (exit 0), or a worker's traceback seconds after the start. The
Session (replay/run/session.py) runs both checks for every verb that sends traffic (replay, sweep,
shadow, locust, capacity --verify), so each such problem is one error, one line per target:

- `check_tokenizers`: every configured `tokenizer` is loaded once here, as the workers load it
  (replay/requests/builder.py: the tokenizer and the prompt frames), once per distinct directory and
  side by side. A tokenizer that does not load is a TargetConfigError naming the target file, the
  field and the path (a path that does not exist is refused earlier, by `load_target`). It runs before
  any vLLM server is started, so a bad tokenizer costs no server start-up.
- `check_endpoints`: every replica URL of every ready target (its `endpoints`, or its `base_url`, a
  started vLLM server's included) gets one cheap request that bills no tokens, with the target's key
  in the header its protocol uses (read through replay/secrets.py, never written anywhere), all at
  once, each within PROBE_TIMEOUT_S:
  - OpenAI-compatible (openai, vllm): GET {base_url}/models;
  - Anthropic: GET {base_url}/v1/models (with the anthropic-version header);
  - Azure OpenAI: GET {base_url}/openai/models?api-version={api_version}.
  What counts: any HTTP answer proves that something listens, and passes (a gateway without a models
  route answers 404 or 405, and still serves completions), except 401 and 403: the server refused the
  key, so every row would be an http_error; that fails, naming the status and where the key comes
  from, never the key or the server's text about it. A 5xx answer passes with a warning line (a
  server that listens but says it is unwell). No answer at all fails: connection refused, a name
  that does not resolve, a TLS error, or no answer within PROBE_TIMEOUT_S. The failures are one
  EndpointCheckError whose message has one line per failing URL: `target NAME: URL: error`.

Both run in the driver, on its host: on a cluster (`--address`), workers on other nodes need the same
tokenizer path and the same view of the endpoints, as they need the key variable (config.read_keys).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.secrets import Scrubber
from shadowreplay.replay.targets.config import TargetConfig, TargetConfigError

PROBE_TIMEOUT_S = 5.0
REFUSED_KEY_STATUSES = frozenset({401, 403})
ERROR_CHARS = 300  # one failure's text, at most (a line, not a traceback)
TOKENIZER_LOADERS = 4  # tokenizers loaded side by side, at most


class EndpointCheckError(ShadowReplayError):
    """A target endpoint that gave no HTTP answer, or refused the key; one line per failing URL."""


@dataclass(frozen=True)
class EndpointCheck:
    """The cheap request that tells whether one replica URL of a target answers."""

    target: str
    url: str  # the replica's base URL, as the failure line names it
    probe_url: str  # what is asked: GET probe_url
    headers: dict[str, str] = field(repr=False)  # the protocol's headers, the key among them (never printed)
    key_source: str | None = None  # where the key comes from (None: no key), for a refused key's message

    @classmethod
    def for_target(cls, target: TargetConfig, url: str, key: str | None) -> EndpointCheck:
        """The check of replica `url` of `target`, with the headers its wire protocol sends (`key` in
        the protocol's own key header)."""
        from shadowreplay.replay.clients.protocols import protocol_for_target

        protocol = protocol_for_target(target)
        body: dict = {"model": target.model}
        body |= {"messages": [{"role": "user", "content": "."}]} if target.api == "chat" else {"prompt": "."}
        headers = {
            name: value
            for name, value in protocol.build_request(body, key).headers.items()
            if name.lower() not in ("content-type", "accept")  # a GET without a body or a stream
        }
        if target.kind == "anthropic":
            probe_url = f"{url}/v1/models"
        elif target.kind == "azure_openai":
            assert target.azure is not None, "an azure_openai target has its azure: section (TargetConfig checks it)"
            probe_url = f"{url}/openai/models?{urlencode({'api-version': target.azure.api_version})}"
        else:
            probe_url = f"{url}/models"
        return cls(target.name, url, probe_url, headers, _key_source(target, key))

    def line(self, error: str) -> str:
        return f"target {self.target}: {self.url}: {error}"


def check_endpoints(targets: Sequence[TargetConfig], timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Check every replica URL of every target at once (see the module docstring). Returns the warning
    lines (5xx answers); raises EndpointCheckError, one line per failing URL, when any gave no answer or
    refused the key. Keys are read here (TargetConfigError when one cannot be) and scrubbed from every line."""
    keys = {target.name: target.api_key() for target in targets}
    checks = [
        EndpointCheck.for_target(target, url, keys[target.name]) for target in targets for url in target.replica_urls
    ]
    if not checks:
        return []
    scrubber = Scrubber(keys.values())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="endpoint-check") as pool:
        # Its own thread, so its own event loop, whatever the caller runs.
        results = pool.submit(asyncio.run, _run_checks(checks, timeout_s)).result()
    failures = [scrubber.text(check.line(error)) for check, (error, _) in zip(checks, results, strict=True) if error]
    if failures:
        raise EndpointCheckError("\n".join(failures))
    return [scrubber.text(check.line(warning)) for check, (_, warning) in zip(checks, results, strict=True) if warning]


async def _run_checks(checks: list[EndpointCheck], timeout_s: float) -> list[tuple[str | None, str | None]]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        return list(await asyncio.gather(*(_check(session, check, timeout_s) for check in checks)))


async def _check(session, check: EndpointCheck, timeout_s: float) -> tuple[str | None, str | None]:
    """(the failure, the warning) of one check; each None where there is none."""
    import aiohttp

    try:
        async with session.get(check.probe_url, headers=check.headers, allow_redirects=False) as response:
            status, reason = response.status, response.reason or ""
    except TimeoutError:
        return f"no HTTP answer within {timeout_s:g} s (GET {check.probe_url})", None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return _one_line(str(exc) or type(exc).__name__), None
    answered = f"GET {check.probe_url} answered HTTP {status}{f' {reason}' if reason else ''}"
    if status in REFUSED_KEY_STATUSES:
        why = (
            f"the key is refused ({check.key_source})"
            if check.key_source
            else "the server asks for a key and the target gives none (api_key_env or api_key_file)"
        )
        return f"{answered}: {why}; every request would fail", None
    if status >= 500:
        return None, f"{answered} (it listens; the run goes on)"
    return None, None


def _key_source(target: TargetConfig, key: str | None) -> str | None:
    """Where the key sent comes from (its variable's or file's name, never the key), or None without one."""
    if not key:
        return None
    return f"api_key_env {target.api_key_env}" if target.api_key_env else f"api_key_file {target.api_key_file}"


def check_tokenizers(targets: Sequence[TargetConfig]) -> None:
    """Load every target's tokenizer once, as the workers will (see the module docstring); a tokenizer
    that does not load is a TargetConfigError with one line per target: its file, `tokenizer`, the
    path and why."""
    by_dir: dict[str, list[TargetConfig]] = {}
    for target in targets:
        if target.tokenizer:
            by_dir.setdefault(target.tokenizer, []).append(target)
    if not by_dir:
        return
    _import_transformers_quietly()
    with concurrent.futures.ThreadPoolExecutor(min(TOKENIZER_LOADERS, len(by_dir))) as pool:
        problems = dict(zip(by_dir, pool.map(_tokenizer_problem, by_dir), strict=True))
    lines = [
        f"{target.source or f'target {target.name}'}: tokenizer: {problem}"
        for directory, problem in problems.items()
        if problem
        for target in by_dir[directory]
    ]
    if lines:
        raise TargetConfigError("\n".join(lines))


def _tokenizer_problem(directory: str) -> str | None:
    """Why the tokenizer at `directory` cannot serve the workers, or None when it loads."""
    from shadowreplay.replay.requests.prompt_synthesis import PromptSynthesisError, PromptSynthesizer

    if not Path(directory).is_dir():
        return f"{directory} is not a directory (a local Hugging Face tokenizer directory is needed)"
    try:
        PromptSynthesizer(directory)
    except PromptSynthesisError as exc:
        return _one_line(str(exc))
    except Exception as exc:  # a broken file fails in transformers or tokenizers any way; one line, no traceback
        return _one_line(f"{directory}: cannot load the tokenizer: {type(exc).__name__}: {exc}")
    return None


def _import_transformers_quietly() -> None:
    """Import transformers without its warning that PyTorch is absent (true, and irrelevant to
    tokenizers), as the workers do (replay/run/runner.py)."""
    if "transformers" in sys.modules:
        return
    previous = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    try:
        import transformers  # noqa: F401 - imported for its side effect: the library's log level
    finally:
        if previous is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = previous


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."
