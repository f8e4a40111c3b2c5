"""A typo group is flagged on every enqueue, not only the first (issue 14).

Publishing creates a group's subscription, so after the first enqueue the broker knows the typo;
what tells it apart is that no worker ever declared it (``records/groups/<g>/pipeline.json``).
Real CLI processes on the embedded SQLite broker and the file blob store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pixfleet.blobs import open_blobstore
from pixfleet.declared import declare_pipeline
from tests.helpers import images
from tests.helpers.cli import run_cli

TYPO = (
    "warning: no worker has ever consumed group 'thumbz' (known groups: thumbs) — its tasks "
    "wait for: worker run --group thumbz"
)


def _declare(home: Path, group: str) -> None:
    """What ``worker run --group GROUP`` records when it starts."""

    async def declare() -> None:
        await declare_pipeline(open_blobstore((home / "blobs").as_uri()), group, "thumbs")

    asyncio.run(declare())


def test_a_typo_group_warns_on_every_enqueue_and_a_declared_group_never(tmp_path: Path) -> None:
    [photo] = images.write_samples(tmp_path / "s", count=1)
    assert run_cli("producer", "enqueue", str(photo), home=tmp_path).stderr == ""
    _declare(tmp_path, "thumbs")
    # the second time the broker knows 'thumbz' already: still flagged, once per command
    for groups in (["-g", "thumbz"], ["-g", "thumbz", "-g", "thumbz"]):
        typo = run_cli("producer", "enqueue", str(photo), *groups, home=tmp_path)
        assert typo.returncode == 0, typo.stderr
        assert typo.stdout.startswith("queued ")
        assert typo.stderr.splitlines() == [TYPO]
    declared = run_cli("producer", "enqueue", str(photo), "-g", "thumbs", home=tmp_path)
    assert declared.returncode == 0 and declared.stderr == "", declared.stderr
