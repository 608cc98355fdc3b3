"""A scripted server that answers questions, for shadow comparisons with known references: the faulty
server's exact OpenAI wire format (tests/support/faulty_server.py), with answers chosen by content.

A request's last user message reads "Question <i>: what is <a> plus <b>?"; the answer is the text
"The answer is <a + b>." streamed word by word (usage counts its tokens), so a `numeric` or
`contains` scorer against the reference "<a + b>" finds it right. A `Degradation` makes the server a
worse candidate from question `from_question` on (the log orders questions by arrival, so that is a
known moment on the replay's timeline): `extra_ttft_ms` more to the first token, and/or a wrong
answer (a + b + 1) for every question i with i % `wrong_every` == 0 (5: 20% of them).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.faulty_server import FaultyServer, Script
from tests.support.server_thread import ServerThread
from tests.support.traffic_logs import write_log

QUESTION = re.compile(r"Question (\d+): what is (\d+) plus (\d+)\?")


@dataclass(frozen=True)
class Degradation:
    from_question: int
    extra_ttft_ms: float = 0.0
    wrong_every: int = 0  # 0: every answer right


def answer_text(a: int, b: int, wrong: bool = False) -> str:
    return f"The answer is {a + b + (1 if wrong else 0)}."


class AnswerServer(FaultyServer):
    def __init__(self, script: Script | None = None, degradation: Degradation | None = None, port: int = 0):
        super().__init__(script or Script(ttft_ms=40.0, itl_ms=5.0), port=port)
        self.degradation = degradation

    def script_for(self, body: dict, script: Script) -> Script:
        body.pop("max_tokens", None)  # the answer's own length, whatever was asked
        messages = body.get("messages") or []
        text = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        match = QUESTION.search(str(text))
        if match is None:
            return script
        i, a, b = (int(g) for g in match.groups())
        late = self.degradation is not None and i >= self.degradation.from_question
        wrong = late and bool(self.degradation.wrong_every) and i % self.degradation.wrong_every == 0  # type: ignore[union-attr]
        words = answer_text(a, b, wrong).split(" ")
        tokens = [words[0], *(" " + w for w in words[1:])]
        extra = self.degradation.extra_ttft_ms if late else 0.0  # type: ignore[union-attr]
        return dataclasses.replace(script, token_texts=tokens, tokens=len(tokens), ttft_ms=script.ttft_ms + extra)


class AnswerServerThread(ServerThread[AnswerServer]):
    def __init__(self, script: Script | None = None, degradation: Degradation | None = None):
        super().__init__(AnswerServer(script, degradation))


def question_log(path: Path, questions: int, rate: float, tags: tuple[str, ...] = ("math", "chat")) -> Path:
    """A traffic log of `questions` chat requests `1 / rate` s apart, question i asking i % 50 + 1 plus i % 7 + 2,
    with its reference (the sum) and production's answer (right); tags alternate."""
    start = datetime(2024, 5, 1, 10, tzinfo=UTC)
    rows = []
    for i in range(questions):
        a, b = i % 50 + 1, i % 7 + 2
        rows.append(
            {
                "request_id": f"q-{i:04d}",
                "arrival_time": start + timedelta(seconds=i / rate),
                "session_id": None,
                "api": "chat",
                "messages": json.dumps([{"role": "user", "content": f"Question {i}: what is {a} plus {b}?"}]),
                "prompt": None,
                "params": json.dumps({"temperature": 0}),
                "prompt_tokens": 12,
                "completion_tokens": 4,
                "prefix_block_ids": None,
                "tag": tags[i % len(tags)],
                "response_text": answer_text(a, b),
                "reference": str(a + b),
            }
        )
    return write_log(path, rows)


_GRADED = re.compile(
    r"Reference answer \(may be empty\):\n(.*?)\n\nAnswer to grade:\n(.*?)\n\nIs the answer", re.DOTALL
)


class JudgeServer(FaultyServer):
    """A scripted judge for the default rubric (analysis/shadow/gates_file.py DEFAULT_RUBRIC): PASS where the
    graded answer's last number is the reference, else FAIL; it counts the prompts it graded."""

    def __init__(self, port: int = 0):
        super().__init__(Script(ttft_ms=5.0, itl_ms=1.0), port=port)
        self.graded = 0

    def script_for(self, body: dict, script: Script) -> Script:
        body.pop("max_tokens", None)
        messages = body.get("messages") or []
        match = _GRADED.search(str(messages[-1].get("content", ""))) if messages else None
        if match is None:
            return dataclasses.replace(script, token_texts=["I", " cannot", " tell"], tokens=3)
        self.graded += 1
        numbers = re.findall(r"-?\d+", match.group(2))
        verdict = "PASS" if numbers and numbers[-1] == match.group(1).strip() else "FAIL"
        return dataclasses.replace(script, token_texts=[verdict], tokens=1)


class JudgeServerThread(ServerThread[JudgeServer]):
    def __init__(self) -> None:
        super().__init__(JudgeServer())
