"""`--output-lengths` on the verbs that build requests from a log (replay, sweep, locust)."""

from __future__ import annotations

import pytest

from shadowreplay.cli import build_parser
from shadowreplay.verbs.locust import locust_command


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "log.parquet", "-t", "t.yaml", "-o", "run"],
        ["sweep", "log.parquet", "-t", "t.yaml", "--from", "1", "--to", "2", "-o", "sweep"],
        ["locust", "--target", "t.yaml", "--log", "log.parquet", "-o", "run"],
    ],
)
def test_recorded_is_the_default_and_natural_is_accepted(argv):
    parser = build_parser()
    assert parser.parse_args(argv).output_lengths == "recorded"
    assert parser.parse_args([*argv, "--output-lengths", "natural"]).output_lengths == "natural"
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--output-lengths", "exact"])


def test_locust_passes_the_mode_to_its_users():
    args = build_parser().parse_args(
        ["locust", "--target", "t.yaml", "--log", "log.parquet", "-o", "run", "--output-lengths", "natural"]
    )
    command = locust_command(args, None)
    assert command[command.index("--output-lengths") + 1] == "natural"
