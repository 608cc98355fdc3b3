"""The built wheel: one top-level package, `shadowreplay`, that works without a checkout.

`pip wheel .` builds it (setuptools from PyPI, as any user's build would); the wheel is unpacked
into a folder that is put first on the path of a Python started outside the checkout, which then
imports the library from the wheel, finds the bundled trace, and is told in one line that the
embedded default needs a checkout.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (path,) = out.glob("shadowreplay-*.whl")
    return path


def test_the_wheel_holds_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = archive.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode()
    assert {name.split("/")[0] for name in names} == {"shadowreplay", wheel.name.split("-py3")[0] + ".dist-info"}
    assert top_level.split() == ["shadowreplay"]
    for module in ("replay/schemas/run_dir.py", "loadgen/sweep.py", "analysis/metrics/table.py", "cli.py"):
        assert f"shadowreplay/{module}" in names
    assert "shadowreplay/embedded/data/azure_conv_first5min.csv" in names
    assert "shadowreplay/embedded/data/NOTICE.md" in names
    assert not any(name.startswith(("tests/", "scripts/", "replay/", "analysis/", "loadgen/")) for name in names)


def test_the_library_works_from_the_wheel_without_a_checkout(wheel, tmp_path):
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    probe = textwrap.dedent(
        """
        import shadowreplay, shadowreplay.replay.run.runner, shadowreplay.analysis.summary.run_summary
        from shadowreplay.embedded import checkout
        print(shadowreplay.__file__)
        print(len(checkout.bundled_trace().read_text().splitlines()))
        try:
            checkout.checkout_root()
        except checkout.EmbeddedError as exc:
            print("embedded:", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    where, rows, embedded = done.stdout.splitlines()[-3:]
    assert where.startswith(str(unpacked))
    assert int(rows) == 1446  # the header and 1,445 requests
    assert embedded.startswith("embedded: the embedded default") and "scripts/setup.sh" in embedded
