"""Pipelines from user code: ``--pipeline module:function`` from the current directory (no
PYTHONPATH), and pipelines registered by installed packages (entry point group
``pixfleet.pipelines``). The custom pipeline is the one docs/pipelines.md shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.pipelines import known, resolve
from pixfleet.errors import ParamsInvalid, PipelineUnknown
from pixfleet.images import Limits
from tests.helpers import images
from tests.helpers.cli import REPO

DOC = REPO / "docs" / "pipelines.md"


def documented_pipeline() -> str:
    """The first ```python block of docs/pipelines.md: the complete ``grey`` pipeline."""
    [first, *_] = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return str(first)


def python(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # -P: the current directory is NOT put on sys.path, as with the `worker` console script.
    return subprocess.run(
        [sys.executable, "-P", *args],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_a_module_in_the_current_directory_runs_in_the_pool(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "grey.py").write_text(documented_pipeline())
    env = {"PIXFLEET_HOME": str(tmp_path / "home")}
    [photo] = images.write_samples(tmp_path / "s", count=1)
    queued = python("-m", "producer", "enqueue", str(photo), "-g", "grey", "-p", "size=64",
                    cwd=work, env=env)  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    served = python("-m", "consumers", "run", "-g", "grey", "--pipeline", "grey:run",
                    "--burst", "-c", "1", cwd=work, env=env)  # fmt: skip
    assert served.returncode == 0, served.stderr
    assert "worker stopped: 1 ok, 0 failed" in served.stderr
    outputs = list((tmp_path / "home" / "blobs" / "outputs").rglob("grey/grey-64.jpg"))
    assert len(outputs) == 1


def test_the_documented_pipeline_checks_its_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "grey_doc.py").write_text(documented_pipeline())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    run = resolve("grey", "grey_doc:run")
    [rendition] = run(images.jpeg_bytes(), {"size": 64}, Limits()).renditions
    assert (rendition.name, max(rendition.width, rendition.height)) == ("grey-64.jpg", 64)
    with pytest.raises(ParamsInvalid, match="grey params: sise: Extra inputs"):
        run(images.jpeg_bytes(), {"sise": 64}, Limits())


def test_installed_packages_register_pipelines_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    (site / "pixfleet_grey").mkdir(parents=True)
    (site / "pixfleet_grey" / "__init__.py").write_text(documented_pipeline())
    info = site / "pixfleet_grey-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pixfleet-grey\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pixfleet.pipelines]\ngrey = pixfleet_grey:run\n")
    with pytest.raises(PipelineUnknown, match="no pipeline named 'grey'"):
        resolve("grey")
    monkeypatch.syspath_prepend(str(site))
    assert known()["grey"] == "pixfleet_grey:run"
    assert known()["thumbs"] == "consumers.pipelines.thumbs:run"
    [rendition] = resolve("grey")(images.jpeg_bytes(), {"size": 32}, Limits()).renditions
    assert rendition.name == "grey-32.jpg"
    listed = python("-m", "consumers", "pipelines", cwd=tmp_path,
                    env={"PYTHONPATH": f"{REPO}:{site}"})  # fmt: skip
    assert "grey\tpixfleet_grey:run\tentry point" in listed.stdout.splitlines(), listed.stderr
