"""A local Azure OpenAI endpoint: Azure's URL scheme and key header in front of the scripted
OpenAI stream of tests/support/faulty_server.py.

Written from Azure OpenAI's REST reference: `POST /openai/deployments/{deployment}/chat/completions
?api-version=...` (and `/completions`), the key in an `api-key` header. As Azure does, it answers
401 `{"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong
API endpoint..."}}` for a missing or wrong key, 404 `{"error": {"code": "404", "message":
"Resource not found"}}` without an api-version, and 404 `DeploymentNotFound` for a deployment it
does not serve. Past those checks the request is answered by FaultyServer (scripted through the
body's `faulty` object), so the stream is OpenAI's chunk format; Azure's `prompt_filter_results`
first chunk is added when `prompt_filter_chunk` is on. `echo_headers_in_401` makes a careless
server that puts the key and the request's headers into its 401 message.
"""

from __future__ import annotations

import json

from aiohttp import web

from tests.support.faulty_server import FaultyServer, Script

ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
    "key for an active subscription and use a correct regional API endpoint for your resource."
)


class AzureOpenAIServer(FaultyServer):
    """FaultyServer behind Azure's deployment paths; `seen` records (deployment, api-version, api)."""

    def __init__(
        self,
        deployments: set[str],
        api_key: str,
        script: Script | None = None,
        port: int = 0,
        echo_headers_in_401: bool = False,
        prompt_filter_chunk: bool = True,
    ):
        super().__init__(script, port)
        self.deployments = set(deployments)
        self.api_key = api_key
        self.echo_headers_in_401 = echo_headers_in_401
        self.prompt_filter_chunk = prompt_filter_chunk
        self.seen: list[tuple[str, str, str]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"  # the resource endpoint, as https://RESOURCE.openai.azure.com

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._azure_chat)
        app.router.add_post("/openai/deployments/{deployment}/completions", self._azure_completions)
        return app

    async def _azure_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._azure(request, "chat")

    async def _azure_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._azure(request, "completions")

    async def _azure(self, request: web.Request, api: str) -> web.StreamResponse:
        if request.headers.get("api-key") != self.api_key:
            message = ACCESS_DENIED
            if self.echo_headers_in_401:
                message = (
                    f"api-key {request.headers.get('api-key')!r} refused. "
                    f"Request headers: {json.dumps(dict(request.headers))}. {message}"
                )
            return _azure_error(401, "401", message)
        version = request.query.get("api-version")
        if not version:
            return _azure_error(404, "404", "Resource not found")
        deployment = request.match_info["deployment"]
        if deployment not in self.deployments:
            return _azure_error(404, "DeploymentNotFound", "The API deployment for this resource does not exist.")
        self.seen.append((deployment, version, api))
        return await self._serve(request, api)

    async def _stream(self, request, stream, script, tokens, include_usage, arrived) -> None:
        if self.prompt_filter_chunk:  # Azure's first chunk: the prompt's content-filter verdict, no choices
            verdict = {
                "hate": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": False, "severity": "safe"},
            }
            chunk = {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": verdict}],
            }
            await stream.event(json.dumps(chunk))
        await super()._stream(request, stream, script, tokens, include_usage, arrived)


def _azure_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
