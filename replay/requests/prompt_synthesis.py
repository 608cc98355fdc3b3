"""Synthesized prompts of an exact token length in a target's own tokenizer (docs/DESIGN.md).

A traffic-log row without text (Azure, Mooncake) carries only `prompt_tokens` and perhaps
`prefix_block_ids`. The replay sends instead a prompt that the *server* counts as exactly
`prompt_tokens` tokens, whose text is identical wherever the block ids repeat, so that prefix
caching sees the production's sharing.

How the count is exact
- The prompt is a run of words from a *word list* drawn from the tokenizer: lowercase ASCII words
  that are one token both with and without a leading space. The content is `w0 w1 w2 ...`
  (single spaces; the first word has no space, so chat templates that trim content leave it as is).
- The *frame* is what the server wraps around the content: for chat, the text of the chat
  template rendered around one user message (vLLM tokenizes that rendered text without adding
  special tokens); for completions, nothing, but the tokenizer's own special tokens (BOS) are added.
- When the tokenizer's pre-tokenizer cuts `w0 w1 w2` into one piece per word (byte-level BPE with a
  split regex, Metaspace), BPE never merges across words, so the content counts exactly one token
  per word. The words are also kept only if they tokenize as one token against the frame's edges
  (as first and as last word). Then `count = frame overhead + words`, by construction: no
  tokenization in the hot path ("constructive" mode; the tests verify it by tokenizing).
- A tokenizer without such a pre-tokenizer gets "checked" mode: each prompt is tokenized and its
  tail adjusted until the count is exact (slower, still exact; an unreachable length raises).

Prefix sharing
Prompt token position t lies in block t // block_size (Mooncake's `hash_ids` are per 512-token
block of the prompt as the server sees it, template included). The words at positions of block i
come from a word sequence seeded by `prefix_block_ids[i]`; positions beyond the given ids use a
sequence seeded by (request_id, i). So equal leading block ids give byte-identical leading text,
and everything is deterministic per request_id. Block texts are cached.

Lengths
`prompt_tokens` below `min_prompt_tokens(api)` (the frame plus one word) raises `PromptTooShort`;
the request builder raises such lengths to it and flags the row `raised`. Lengths above the
server's context are the caller's clamp (--max-prompt-tokens).
Output lengths: `forced_output_fields` are what vLLM needs to emit exactly N tokens; the builder
adds them where the target `forces_output_length` and the row asks for an exact length.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer

from shadowreplay.errors import ShadowReplayError

Api = Literal["chat", "completions"]

WORD_PATTERN = re.compile(r"[a-z]{2,12}")
MAX_WORDS = 2048
MIN_WORDS = 16
BLOCK_CACHE_SIZE = 4096
CHECKED_MODE_ROUNDS = 8
_SENTINEL = "qqzxsentinelqqzx"


class PromptSynthesisError(ShadowReplayError, ValueError):
    """A tokenizer or template that synthesis cannot work with, or a length it cannot produce."""


class PromptTooShort(PromptSynthesisError):
    """`prompt_tokens` is below what the frame (chat template, BOS) plus one word takes."""


def forced_output_fields(completion_tokens: int) -> dict:
    """Request fields that make vLLM emit exactly `completion_tokens` output tokens: a cap
    (`max_tokens`), a floor (`min_tokens`, which also holds back stop strings and stop token ids),
    and no stop at the end-of-sequence token (`ignore_eos`). Only the context window can end it
    sooner. Hosted APIs have no such fields: there the cap alone is sent."""
    if completion_tokens < 1:
        raise PromptSynthesisError(f"completion_tokens must be at least 1, got {completion_tokens}")
    return {"max_tokens": completion_tokens, "min_tokens": completion_tokens, "ignore_eos": True}


@dataclass(frozen=True)
class Frame:
    """Text around the content as the server tokenizes it, and its token overhead."""

    before: str
    after: str
    add_special_tokens: bool
    overhead: int  # tokens of the frame: count(before + content + after) - words of content
    leading: int  # frame tokens before the content (aligns the content to prompt blocks)


@dataclass(frozen=True)
class BlockText:
    """`block_size` words (each with its leading space) and where each word ends in `text`."""

    text: str
    ends: np.ndarray  # ends[k] = character offset just after word k

    def words(self, start: int, stop: int) -> str:
        """Words start..stop-1 (each with its leading space)."""
        begin = int(self.ends[start - 1]) if start > 0 else 0
        return self.text[begin : int(self.ends[stop - 1])]


class PromptSynthesizer:
    """Prompts of an exact length in the tokenizer at `tokenizer_dir` (a Hugging Face directory)."""

    def __init__(self, tokenizer_dir: str | Path, block_size: int = 512):
        if block_size < 1:
            raise PromptSynthesisError(f"block_size must be at least 1, got {block_size}")
        self.tokenizer_dir = Path(tokenizer_dir)
        self.block_size = block_size
        self._hf = load_hf_tokenizer(self.tokenizer_dir)
        self.backend: Tokenizer = self._hf.backend_tokenizer
        candidates = self._single_token_words()
        self.constructive = self._pre_tokenizer_splits_words(candidates)
        self._frames: dict[str, Frame] = {}
        self._words: dict[str, np.ndarray] = {}
        self._word_lengths: dict[str, np.ndarray] = {}
        for api in ("chat", "completions"):
            frame, words = self._fit_frame(api, candidates)
            if frame is None:
                continue
            self._frames[api] = frame
            self._words[api] = np.array([" " + w for w in words], dtype=object)
            self._word_lengths[api] = np.array([len(w) + 1 for w in words], dtype=np.int64)
        if not self._frames:
            raise PromptSynthesisError(f"{self.tokenizer_dir}: found no usable single-token words in this tokenizer")
        self._block = lru_cache(maxsize=BLOCK_CACHE_SIZE)(self._make_block)

    # ---- public API -------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens in `text`, special tokens not added (the client-side count of output text)."""
        return len(self.backend.encode(text, add_special_tokens=False).ids)

    def count_prompt_tokens(self, body: Mapping, api: Api) -> int:
        """Tokens the server counts for the prompt part of `body` (`messages` or `prompt`),
        by tokenizing it as vLLM does: the rendered chat template without added special tokens,
        or the completions prompt with them."""
        if api == "chat":
            text = self._hf.apply_chat_template(list(body["messages"]), tokenize=False, add_generation_prompt=True)
            return len(self.backend.encode(text, add_special_tokens=False).ids)
        return len(self.backend.encode(body["prompt"], add_special_tokens=True).ids)

    def min_prompt_tokens(self, api: Api) -> int:
        """The shortest prompt this synthesizer makes for `api`: the frame plus one word."""
        return self._frame(api).overhead + 1

    def synthesize(
        self,
        request_id: str,
        prompt_tokens: int,
        api: Api = "chat",
        prefix_block_ids: Sequence[int] | None = None,
    ) -> dict:
        """Request fields for a prompt the server counts as exactly `prompt_tokens` tokens:
        `{"messages": [...]}` for chat, `{"prompt": ...}` for completions."""
        frame = self._frame(api)
        words = prompt_tokens - frame.overhead
        if words < 1:
            raise PromptTooShort(
                f"request {request_id}: prompt_tokens={prompt_tokens} is below the minimum of "
                f"{frame.overhead + 1} for {api} in {self.tokenizer_dir} "
                f"(frame of {frame.overhead} tokens plus one word)"
            )
        blocks = list(prefix_block_ids) if prefix_block_ids is not None else []
        content = self._content(api, request_id, words, blocks, frame.leading)
        if not self.constructive:
            content = self._checked(api, request_id, prompt_tokens, words, blocks, content)
        return self._fields(api, content)

    def synthesize_row(self, row: Mapping) -> dict:
        """`synthesize` for a traffic-log row (request_id, api, prompt_tokens, prefix_block_ids)."""
        if row.get("prompt_tokens") is None:
            raise PromptSynthesisError(f"request {row.get('request_id')}: prompt_tokens is null; nothing to synthesize")
        return self.synthesize(
            request_id=row["request_id"],
            prompt_tokens=int(row["prompt_tokens"]),
            api=row.get("api") or "chat",
            prefix_block_ids=row.get("prefix_block_ids"),
        )

    # ---- content ----------------------------------------------------------------------------

    def _frame(self, api: str) -> Frame:
        try:
            return self._frames[api]
        except KeyError:
            if api not in ("chat", "completions"):
                raise PromptSynthesisError(f"api must be chat or completions, got {api!r}") from None
            raise PromptSynthesisError(
                f"{self.tokenizer_dir}: cannot synthesize {api} prompts with this tokenizer"
            ) from None

    @staticmethod
    def _fields(api: str, content: str) -> dict:
        if api == "chat":
            return {"messages": [{"role": "user", "content": content}]}
        return {"prompt": content}

    def _content(self, api: str, request_id: str, words: int, blocks: list[int], leading: int) -> str:
        """`words` words; the word at prompt position t = leading + p comes from block t // size."""
        size = self.block_size
        parts = []
        position, end = leading, leading + words
        while position < end:
            index, offset = divmod(position, size)
            take = min(size - offset, end - position)
            key = ("shared", int(blocks[index])) if index < len(blocks) else ("own", request_id, index)
            parts.append(self._block(api, key).words(offset, offset + take))
            position += take
        return "".join(parts)[1:]  # the first word goes without its space

    def _make_block(self, api: str, key: tuple) -> BlockText:
        vocabulary = self._words[api]
        picks = _word_picks(_seed(key), self.block_size, len(vocabulary))
        return BlockText("".join(vocabulary[picks]), np.cumsum(self._word_lengths[api][picks]))

    def _checked(self, api: str, request_id: str, target: int, words: int, blocks: list[int], content: str) -> str:
        """Adjust the word count until the tokenized prompt is exact (tokenizers that merge across words)."""
        frame = self._frames[api]
        for _ in range(CHECKED_MODE_ROUNDS):
            counted = len(
                self.backend.encode(
                    frame.before + content + frame.after, add_special_tokens=frame.add_special_tokens
                ).ids
            )
            if counted == target:
                return content
            words += target - counted
            if words < 1:
                break
            content = self._content(api, request_id, words, blocks, frame.leading)
        raise PromptSynthesisError(
            f"request {request_id}: could not reach exactly {target} prompt tokens for {api} in {self.tokenizer_dir}"
        )

    # ---- set-up -----------------------------------------------------------------------------

    def _single_token_words(self) -> list[str]:
        """Lowercase ASCII words that are one token with and without a leading space, most frequent
        (lowest id) first."""
        decoded = (self.backend.decode([i]).strip() for i in range(self.backend.get_vocab_size()))
        candidates = list(dict.fromkeys(w for w in decoded if WORD_PATTERN.fullmatch(w)))  # first of each, in order
        plain = self.backend.encode_batch(candidates, add_special_tokens=False)
        spaced = self.backend.encode_batch([" " + w for w in candidates], add_special_tokens=False)
        return [w for w, a, b in zip(candidates, plain, spaced) if len(a.ids) == 1 and len(b.ids) == 1][: 4 * MAX_WORDS]

    def _pre_tokenizer_splits_words(self, words: list[str]) -> bool:
        """Whether the pre-tokenizer cuts a run of words into one piece per word (no BPE merge can
        then cross a word boundary)."""
        pre = self.backend.pre_tokenizer
        sample = words[:64]
        if pre is None or len(sample) < 3:
            return False
        return len(pre.pre_tokenize_str(" ".join(sample))) == len(sample)

    def _frame_text(self, api: str) -> tuple[str, str, bool] | None:
        if api == "completions":
            return "", "", True
        if not getattr(self._hf, "chat_template", None):
            return None
        rendered = self._hf.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_SENTINEL) != 1:
            raise PromptSynthesisError(
                f"{self.tokenizer_dir}: the chat template does not render a user message's content verbatim"
            )
        before, after = rendered.split(_SENTINEL)
        return before, after, False

    def _fit_frame(self, api: str, candidates: list[str]) -> tuple[Frame | None, list[str]]:
        """The frame of `api` and the words that count as one token at both of its edges."""
        text = self._frame_text(api)
        if text is None or not candidates:
            return None, []
        before, after, special = text

        def counts(contents: list[str]) -> list[int]:
            return [
                len(e.ids)
                for e in self.backend.encode_batch([before + c + after for c in contents], add_special_tokens=special)
            ]

        alone = counts(candidates)
        overhead = Counter(alone).most_common(1)[0][0] - 1
        first_ok = [w for w, n in zip(candidates, alone) if n == overhead + 1]
        if not first_ok:
            return None, []
        anchor = first_ok[0]
        words = [w for w, n in zip(first_ok, counts([anchor + " " + w for w in first_ok])) if n == overhead + 2]
        words = [w for w in words if w != anchor][:MAX_WORDS]
        if len(words) < MIN_WORDS:
            raise PromptSynthesisError(
                f"{self.tokenizer_dir}: only {len(words)} single-token words for {api}; need {MIN_WORDS}"
            )
        leading = len(self.backend.encode(before + anchor, add_special_tokens=special).ids) - 1
        return Frame(before, after, special, overhead, leading), words


def _seed(key: tuple) -> int:
    """A stable 64-bit seed for a block key (Python's hash() changes between processes)."""
    if key[0] == "shared":
        material = b"shared:%d" % key[1]
    else:
        material = b"own:%d:" % key[2] + str(key[1]).encode()
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "little")


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHIFTS = tuple(np.uint64(n) for n in (30, 27, 31, 32))


@lru_cache(maxsize=8)
def _stream_steps(length: int) -> np.ndarray:
    steps = np.arange(1, length + 1, dtype=np.uint64) * _GOLDEN
    steps.flags.writeable = False
    return steps


def _word_picks(seed: int, length: int, choices: int) -> np.ndarray:
    """`length` pseudo-random indices in [0, choices) from `seed`: SplitMix64, vectorised (fast,
    and stable across numpy versions, unlike a Generator's stream), scaled by multiply-shift."""
    s30, s27, s31, s32 = _SHIFTS
    x = _stream_steps(length) + np.uint64(seed)
    y = x >> s30
    x ^= y
    x *= _MIX1
    np.right_shift(x, s27, out=y)
    x ^= y
    x *= _MIX2
    np.right_shift(x, s31, out=y)
    x ^= y
    x >>= s32
    x *= np.uint64(choices)
    x >>= s32
    return x.astype(np.intp)


def load_hf_tokenizer(tokenizer_dir: Path):
    if not (tokenizer_dir / "tokenizer.json").exists() and not (tokenizer_dir / "tokenizer_config.json").exists():
        raise PromptSynthesisError(
            f"{tokenizer_dir}: no tokenizer.json or tokenizer_config.json "
            "(a local Hugging Face tokenizer directory is needed)"
        )
    from transformers import AutoTokenizer  # heavy; only where prompts are synthesized

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise PromptSynthesisError(f"{tokenizer_dir}: cannot load the tokenizer: {exc}") from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise PromptSynthesisError(f"{tokenizer_dir}: needs a fast (tokenizers) tokenizer")
    return tokenizer
