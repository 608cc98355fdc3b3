"""Wire protocols: how each streaming API looks on the wire (see replay/clients/protocols/base.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shadowreplay.replay.clients.protocols.anthropic import AnthropicMessages
from shadowreplay.replay.clients.protocols.azure_openai import AzureOpenAIChat, AzureOpenAICompletions
from shadowreplay.replay.clients.protocols.base import (
    RequestNotTranslatable,
    StreamEvent,
    Usage,
    WireProtocol,
    WireProtocolError,
    WireRequest,
)
from shadowreplay.replay.clients.protocols.openai import OpenAIChat, OpenAICompletions

if TYPE_CHECKING:
    from shadowreplay.replay.targets.config import TargetConfig

__all__ = [
    "AnthropicMessages",
    "AzureOpenAIChat",
    "AzureOpenAICompletions",
    "OpenAIChat",
    "OpenAICompletions",
    "RequestNotTranslatable",
    "StreamEvent",
    "Usage",
    "WireProtocol",
    "WireProtocolError",
    "WireRequest",
    "protocol_for",
    "protocol_for_target",
]


def protocol_for(kind: str, api: str) -> WireProtocol:
    """The wire protocol of a `kind` (openai, vllm, anthropic) and `api` (chat or completions),
    with default options. Raises ValueError for a combination no protocol speaks, and for
    azure_openai, which needs its deployment: use `protocol_for_target`."""
    if kind in ("openai", "vllm"):
        if api == "chat":
            return OpenAIChat()
        if api == "completions":
            return OpenAICompletions()
    if kind == "anthropic" and api == "chat":
        return AnthropicMessages()
    if kind == "azure_openai":
        raise ValueError("kind azure_openai needs its deployment and api_version: use protocol_for_target")
    raise ValueError(f"no wire protocol for target kind {kind!r} with api {api!r}")


def protocol_for_target(target: TargetConfig) -> WireProtocol:
    """The wire protocol of a target, with the options of its config (anthropic:, azure:)."""
    if target.kind == "anthropic" and target.anthropic is not None:
        options = target.anthropic
        return AnthropicMessages(options.version, options.beta, options.default_max_tokens, options.ignore_fields)
    if target.kind == "azure_openai":
        if target.azure is None:
            raise ValueError(f"target {target.name}: kind azure_openai needs an `azure:` section")
        deployment = target.azure.deployment or target.model
        if target.api == "chat":
            return AzureOpenAIChat(deployment, target.azure.api_version)
        return AzureOpenAICompletions(deployment, target.azure.api_version)
    return protocol_for(target.kind, target.api)
