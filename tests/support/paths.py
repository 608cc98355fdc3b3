"""Where the tests find the project's own files: the repository root, test data, shipped configs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
TEST_DATA = TESTS / "data"
SCRIPTS = REPO / "scripts"
CONFIGS = REPO / "configs"
