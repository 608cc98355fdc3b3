"""The console script imports only the verb it is asked for (shadowreplay/cli.py): `report`'s start-up
does not pay for `replay`'s or `ingest`'s imports, and top-level help still lists every verb."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shadowreplay.cli import VERBS, build_parser, named_verb
from tests.support.paths import REPO


@pytest.mark.parametrize(
    ("argv", "verb"),
    [
        (["report", "run", "--json"], "report"),
        (["--version"], None),
        (["-h", "sweep"], "sweep"),
        (["bogus", "report"], None),
        ([], None),
    ],
)
def test_the_verb_is_the_first_argument_that_is_not_an_option(argv, verb):
    assert named_verb(argv) == verb


def test_report_imports_no_other_verb():
    probe = (
        "import sys; from shadowreplay.cli import main\n"
        "try:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('shadowreplay.verbs.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    loaded = done.stdout.strip().splitlines()[-1]
    assert "'shadowreplay.verbs.report'" in loaded
    for other in set(VERBS) - {"report"}:
        assert f"'shadowreplay.verbs.{other}'" not in loaded, loaded


def test_top_level_help_lists_every_verb():
    choices = next(a for a in build_parser()._actions if a.dest == "verb").choices
    assert choices is not None and list(choices) == list(VERBS)
