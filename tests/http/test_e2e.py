"""The ingress over real sockets: two ``uploader serve`` processes and a worker process share
one SQLite broker and one file blob store. Uploads go through one instance; state, events and
outputs are read through the other."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.helpers import images
from tests.http.inprocess import parse_sse
from tests.http.media import noise_jpeg
from tests.http.procs import IngressFleet, wait_json

pytestmark = pytest.mark.e2e

A_JPG = images.jpeg_bytes(640, 480, seed=1)
B_PNG = images.png_bytes(320, 200)


def test_two_files_are_processed_and_readable_from_the_other_instance(
    ingress_fleet: IngressFleet, tmp_path: Path
) -> None:
    tasks = _upload_like_curl(ingress_fleet.a.url, tmp_path)
    assert [t["filename"] for t in tasks] == ["a.jpg", "b.png"]
    assert len({t["task_id"] for t in tasks}) == 2
    with httpx.Client(base_url=ingress_fleet.b.url, timeout=30) as b:
        for task in tasks:
            done = wait_json(b, task["status_url"], until="done")
            [result] = done["results"]
            assert result["status"] == "ok" and result["group"] == "thumbs"
            assert result["filename"] == task["filename"]
            for output in result["outputs"]:
                image = b.get(output["url"])
                assert image.status_code == 200
                assert image.headers["content-type"].startswith("image/")
                with Image.open(io.BytesIO(image.content)) as im:
                    assert im.size == (output["width"], output["height"])
            events = parse_sse(b.get(task["events_url"]).text)
            assert [e for e, _ in events] == ["result", "done"]
            assert events[0][1]["filename"] == task["filename"]
            assert events[1][1] == {"task_id": task["task_id"], "state": "done"}


def test_refusals_over_a_socket_publish_nothing(ingress_fleet: IngressFleet) -> None:
    # "audit" has no worker, so whatever is published there stays countable.
    big = noise_jpeg(640, 480)
    assert len(big) > 200_000  # instance b takes at most 200 kB per file
    with httpx.Client(base_url=ingress_fleet.b.url, timeout=30) as b:
        text = b.post("/v1/uploads", files={"file": ("notes.txt", b"hello")}, data=_audit())
        assert text.status_code == 415
        assert text.json()["error"]["code"] == "input.not_image"
        over = b.post("/v1/uploads", files={"file": ("big.jpg", big)}, data=_audit())
        assert over.status_code == 413, over.text
        assert over.json()["error"]["code"] == "input.too_large"
        assert ingress_fleet.stats("audit").ready == 0
        small = b.post("/v1/uploads", files={"file": ("a.jpg", A_JPG)}, data=_audit())
        assert small.status_code == 202
        assert ingress_fleet.stats("audit").ready == 1


def test_sigterm_lets_the_upload_in_flight_finish_and_exits_0(
    ingress_fleet: IngressFleet,
) -> None:
    instance = ingress_fleet.serve()
    boundary = "pixfleet-slow-upload"
    started = threading.Event()
    outcome: dict[str, httpx.Response] = {}

    def slow_body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.jpg"'
            "\r\nContent-Type: image/jpeg\r\n\r\n"
        ).encode()
        for start in range(0, len(A_JPG), 4096):
            yield A_JPG[start : start + 4096]
            started.set()
            time.sleep(0.03)
        yield f"\r\n--{boundary}--\r\n".encode()

    def send() -> None:
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        with httpx.Client(timeout=30) as client:
            outcome["response"] = client.post(
                f"{instance.url}/v1/uploads", content=slow_body(), headers=headers
            )

    sender = threading.Thread(target=send)
    sender.start()
    assert started.wait(10)
    time.sleep(0.1)
    assert instance.terminate(timeout=30) == 0, instance.log()
    sender.join(10)
    response = outcome["response"]
    assert response.status_code == 202, response.text
    assert response.json()["tasks"][0]["filename"] == "slow.jpg"
    assert "Traceback" not in instance.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{instance.url}/healthz")


def test_a_client_that_goes_away_mid_upload_publishes_nothing(
    ingress_fleet: IngressFleet,
) -> None:
    instance = ingress_fleet.a
    boundary = "pixfleet-abandoned"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="groups"\r\n\r\naborted\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
    ).encode() + A_JPG[:20_000]
    request = (
        f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Length: {len(head) + 10**6}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", instance.port), timeout=10) as sock:
        sock.sendall(request + head)
        time.sleep(0.3)
    time.sleep(0.3)
    assert httpx.get(f"{instance.url}/healthz").status_code == 200
    assert ingress_fleet.stats("aborted").ready == 0
    assert "Traceback" not in instance.log()


def test_readiness_and_metrics_of_a_live_instance(ingress_fleet: IngressFleet) -> None:
    with httpx.Client(base_url=ingress_fleet.a.url, timeout=10) as a:
        assert a.get("/readyz").json() == {"status": "ready"}
        metrics = a.get("/metrics")
        assert metrics.status_code == 200 and "pixfleet_uploads_total" in metrics.text
        assert json.loads(a.get("/openapi.json").text)["info"]["title"] == "pixfleet ingress"


def _upload_like_curl(url: str, tmp_path: Path) -> list[dict[str, Any]]:
    """``curl -F file=@a.jpg -F file=@b.png URL/v1/uploads`` (httpx when there is no curl)."""
    (tmp_path / "a.jpg").write_bytes(A_JPG)
    (tmp_path / "b.png").write_bytes(B_PNG)
    curl = shutil.which("curl")
    if curl is None:
        files = [("file", ("a.jpg", A_JPG)), ("file", ("b.png", B_PNG))]
        response = httpx.post(f"{url}/v1/uploads", files=files, timeout=30)
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
    else:
        argv = [curl, "-sS", "-w", "\\n%{http_code}", "-F", "file=@a.jpg", "-F", "file=@b.png"]
        done = subprocess.run(
            [*argv, f"{url}/v1/uploads"], cwd=tmp_path, capture_output=True, text=True, check=True
        )
        text, _, status = done.stdout.rpartition("\n")
        assert status == "202", done.stdout
        body = json.loads(text)
    tasks: list[dict[str, Any]] = body["tasks"]
    return tasks


def _audit() -> dict[str, str]:
    return {"groups": "audit"}
