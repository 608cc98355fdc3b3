"""Azure OpenAI: OpenAI's streaming format behind Azure's URL scheme and key header.

`POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}` (and
`.../completions` for the completions API), with the key in an `api-key` header instead of
`Authorization: Bearer`. The deployment, not the body's `model`, selects the model. The stream is
OpenAI's chunk format; Azure adds `prompt_filter_results` (in a first chunk whose `choices` is
empty) and `content_filter_results` fields, which carry no output and are ignored.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from shadowreplay.replay.clients.protocols.base import WireRequest
from shadowreplay.replay.clients.protocols.openai import OpenAIChat, OpenAICompletions


class _AzureDeployment:
    """Mixed into an OpenAI protocol: Azure's path, query and key header."""

    path: str

    def __init__(self, deployment: str, api_version: str, include_usage: bool = True):
        if not deployment or not api_version:
            raise ValueError("Azure OpenAI needs a deployment and an api_version")
        super().__init__(include_usage=include_usage)  # type: ignore[call-arg]
        self.deployment = deployment
        self.api_version = api_version

    def build_request(self, body: dict, api_key: str | None) -> WireRequest:
        openai_request = super().build_request(body, None)  # type: ignore[misc]
        headers = dict(openai_request.headers)
        if api_key:
            headers["api-key"] = api_key
        path = (
            f"/openai/deployments/{quote(self.deployment, safe='')}{self.path}"
            f"?{urlencode({'api-version': self.api_version})}"
        )
        return WireRequest(path, headers, openai_request.body)


class AzureOpenAIChat(_AzureDeployment, OpenAIChat):
    """Azure OpenAI chat completions."""

    name = "azure-openai-chat"


class AzureOpenAICompletions(_AzureDeployment, OpenAICompletions):
    """Azure OpenAI completions."""

    name = "azure-openai-completions"
