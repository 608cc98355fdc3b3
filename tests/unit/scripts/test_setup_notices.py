"""scripts/setup.sh installs the project editable with a warnings filter that drops setuptools'
"Editable installation." notice (an InformationOnly UserWarning that pip relays as a
BuildBackendWarning, even with -q) and nothing else."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.support.paths import SCRIPTS

EMIT = """
import warnings
class InformationOnly(UserWarning): pass      # setuptools.warnings.InformationOnly
class BuildBackendWarning(UserWarning): pass  # pip's relay of a build backend's warning
warnings.warn("Editable installation.\\n!!\\n\\n  Please be careful with folders ...\\n\\n!!", InformationOnly)
warnings.warn("Editable installation.\\n!!", BuildBackendWarning)
warnings.warn("Some other notice", UserWarning)
"""


def editable_install_filter() -> str:
    setup = (SCRIPTS / "setup.sh").read_text()
    line = next(line for line in setup.splitlines() if "pip install" in line and " -e " in line)
    match = re.search(r'PYTHONWARNINGS="([^"]+)"', line)
    assert match, f"no PYTHONWARNINGS on the editable install: {line}"
    return match.group(1)


def test_the_editable_install_drops_exactly_the_editable_notice():
    value = editable_install_filter()
    env = {**os.environ, "PYTHONWARNINGS": value}
    done = subprocess.run([sys.executable, "-c", EMIT], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "Editable installation" not in done.stderr
    assert "Some other notice" in done.stderr and "Invalid -W option" not in done.stderr
    bare = {key: item for key, item in os.environ.items() if key != "PYTHONWARNINGS"}
    unfiltered = subprocess.run([sys.executable, "-c", EMIT], env=bare, capture_output=True, text=True, timeout=60)
    assert unfiltered.stderr.count("Editable installation") == 2
