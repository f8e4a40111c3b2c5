"""The API contract in-process: uploads, refusals, idempotency, task state, outputs, auth."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from pixfleet.blobs import store_output
from pixfleet.envelope import Output
from pixfleet.records import read_task, record_result
from producer.http import staging
from producer.http.settings import IngressLimits
from producer.http.staging import clean_filename
from tests.helpers import images
from tests.helpers.tasks import make_result
from tests.http.inprocess import Api, files, running_api
from tests.http.media import jpeg_with_comment

JPEG = images.jpeg_bytes(320, 240)
PNG = images.png_bytes(200, 100)
TEXT = b"just some notes, not an image\n"


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["code"])


async def test_two_files_become_two_published_tasks(api: Api) -> None:
    response = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG), ("b.png", PNG)))
    assert response.status_code == 202, response.text
    tasks = response.json()["tasks"]
    assert [t["filename"] for t in tasks] == ["a.jpg", "b.png"]
    assert len({t["task_id"] for t in tasks}) == 2
    for t in tasks:
        assert t["groups"] == ["thumbs"]
        assert t["status_url"] == f"/v1/tasks/{t['task_id']}"
        assert t["events_url"] == f"/v1/tasks/{t['task_id']}/events"
        task = await read_task(api.store, t["task_id"])
        assert task is not None and task.blob.uri.startswith("uploads/")
    assert await api.ready() == 2
    png = await read_task(api.store, tasks[1]["task_id"])
    assert png is not None and png.blob.content_type == "image/png"
    assert await api.store.read(png.blob.uri) == PNG


async def test_groups_and_params_fields_reach_the_task(api: Api) -> None:
    data = {"groups": "thumbs, faces", "params": json.dumps({"sizes": [64]})}
    response = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)), data=data)
    assert response.status_code == 202, response.text
    task = await read_task(api.store, response.json()["tasks"][0]["task_id"])
    assert task is not None
    assert task.groups == ("thumbs", "faces") and task.params == {"sizes": [64]}
    assert await api.ready("faces") == 1


async def test_a_text_file_is_415_and_nothing_is_published(api: Api) -> None:
    response = await api.client.post("/v1/uploads", files=files(("notes.txt", TEXT)))
    assert response.status_code == 415
    assert error_code(response) == "input.not_image"
    assert "notes.txt" in response.json()["error"]["message"]
    assert await api.ready() == 0


async def test_one_bad_file_refuses_the_whole_request(api: Api) -> None:
    response = await api.client.post(
        "/v1/uploads", files=files(("a.jpg", JPEG), ("notes.txt", TEXT))
    )
    assert response.status_code == 415
    assert await api.ready() == 0  # vetted first, published only when all passed


async def test_over_the_file_limit_is_413_and_nothing_is_published(tmp_path: Path) -> None:
    big = images.jpeg_bytes(1600, 1200)
    async with running_api(tmp_path, limits=IngressLimits(max_file_bytes=len(big) - 1)) as api:
        response = await api.client.post("/v1/uploads", files=files(("big.jpg", big)))
        assert response.status_code == 413
        assert error_code(response) == "input.too_large"
        assert await api.ready() == 0
        ok = await api.client.post("/v1/uploads", files=files(("small.jpg", JPEG)))
        assert ok.status_code == 202  # the instance goes on serving


async def test_request_limits(tmp_path: Path) -> None:
    limits = IngressLimits(max_request_bytes=len(JPEG) * 3, max_files=2)
    async with running_api(tmp_path, limits=limits) as api:
        three = files(("a.jpg", JPEG), ("b.jpg", JPEG), ("c.jpg", JPEG))
        response = await api.client.post("/v1/uploads", files=three)
        assert (response.status_code, error_code(response)) == (413, "request.too_large")
        small = images.jpeg_bytes(40, 30)
        three = files(("a.jpg", small), ("b.jpg", small), ("c.jpg", small))
        response = await api.client.post("/v1/uploads", files=three)
        assert (response.status_code, error_code(response)) == (413, "request.too_many_files")
        assert await api.ready() == 0


async def test_a_decompression_bomb_is_refused_from_its_header(api: Api) -> None:
    response = await api.client.post("/v1/uploads", files=files(("bomb.png", images.bomb_png())))
    assert (response.status_code, error_code(response)) == (413, "image.too_large")
    assert await api.ready() == 0


async def test_a_header_past_the_first_64k_is_checked_from_the_stored_blob(api: Api) -> None:
    # A JPEG whose comments fill the first 64 KiB: its size is read from the stored blob.
    padded = jpeg_with_comment(JPEG, 100_000)
    assert not staging._vet_head(padded[: staging.HEAD_BYTES], "p.jpg", 10**8, complete=False)
    response = await api.client.post("/v1/uploads", files=files(("padded.jpg", padded)))
    assert response.status_code == 202, response.text
    assert await api.ready() == 1


async def test_bad_requests_are_400_with_a_code(api: Api) -> None:
    cases: list[tuple[dict[str, str], str]] = [
        ({"params": "{not json"}, "params.invalid"),
        ({"params": "[1, 2]"}, "params.invalid"),
        ({"groups": "Not A Group"}, "config.invalid"),
        ({"colour": "red"}, "request.invalid"),
    ]
    for data, code in cases:
        response = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)), data=data)
        assert (response.status_code, error_code(response)) == (400, code), data
    response = await api.client.post("/v1/uploads", data={"groups": "thumbs"}, files={})
    assert response.status_code in (400, 415)
    response = await api.client.post("/v1/uploads", content=b"{}", headers=_json())
    assert (response.status_code, error_code(response)) == (415, "request.not_multipart")
    body = b"--xyz\r\nContent-Disposition: form-data; name=file; filename=a.jpg\r\n\r\nabc"
    response = await api.client.post(
        "/v1/uploads", content=body, headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert (response.status_code, error_code(response)) == (400, "request.invalid")
    assert await api.ready() == 0


async def test_the_client_filename_is_only_metadata(api: Api) -> None:
    two = files(("../../etc/passwd.jpg", JPEG), ("C:\\Users\\me\\cat.png", PNG))
    response = await api.client.post("/v1/uploads", files=two)
    assert response.status_code == 202
    names = [t["filename"] for t in response.json()["tasks"]]
    assert names == ["passwd.jpg", "cat.png"]
    assert not (api.store.root.parent / "etc").exists()
    assert clean_filename("a/b\u202egpj.exe") == "bgpj.exe"  # no right-to-left tricks
    assert clean_filename("x\x07y.jpg") == "xy.jpg"
    assert clean_filename("") == clean_filename("/") == "upload"
    assert len(clean_filename("a" * 1000)) == 255


async def test_an_idempotency_key_makes_a_retry_the_same_task(api: Api) -> None:
    headers = {"Idempotency-Key": "client-42.upload-1"}
    first = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)), headers=headers)
    again = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)), headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["tasks"][0]["task_id"] == again.json()["tasks"][0]["task_id"]
    assert first.json()["tasks"][0]["task_id"] == "client-42.upload-1"
    other = await api.client.post("/v1/uploads", files=files(("b.png", PNG)), headers=headers)
    assert (other.status_code, error_code(other)) == (409, "request.conflict")
    two = files(("a.jpg", JPEG), ("b.png", PNG))
    response = await api.client.post("/v1/uploads", files=two, headers={"Idempotency-Key": "k2"})
    assert (response.status_code, error_code(response)) == (400, "request.invalid")
    bad = await api.client.post(
        "/v1/uploads", files=files(("a.jpg", JPEG)), headers={"Idempotency-Key": "../x"}
    )
    assert (bad.status_code, error_code(bad)) == (400, "request.invalid")


async def test_task_state_comes_from_the_completion_records(api: Api) -> None:
    response = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)))
    task_id = response.json()["tasks"][0]["task_id"]
    queued = (await api.client.get(f"/v1/tasks/{task_id}")).json()
    assert queued["state"] == "queued" and queued["results"] == []
    task = await read_task(api.store, task_id)
    assert task is not None
    key = await store_output(
        api.store, task_id, "thumbs", "256.jpg", JPEG, source_sha256=task.blob.sha256
    )
    output = Output(name="256.jpg", uri=key, width=320, height=240, format="jpeg", bytes=len(JPEG))
    await record_result(
        api.store, make_result(task, "thumbs").model_copy(update={"outputs": (output,)})
    )
    done = (await api.client.get(f"/v1/tasks/{task_id}")).json()
    assert done["state"] == "done"
    [result] = done["results"]
    assert result["status"] == "ok" and result["error"] is None
    assert result["filename"] == "a.jpg"  # a record without one: the task's name stands in
    assert result["outputs"][0]["url"] == f"/v1/outputs/{key}"
    image = await api.client.get(result["outputs"][0]["url"])
    assert image.status_code == 200 and image.content == JPEG
    assert image.headers["content-type"] == "image/jpeg"


async def test_an_error_result_makes_the_task_state_error(api: Api) -> None:
    response = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)))
    task = await read_task(api.store, response.json()["tasks"][0]["task_id"])
    assert task is not None
    await record_result(api.store, make_result(task, "thumbs", ok=False))
    body = (await api.client.get(f"/v1/tasks/{task.id}")).json()
    assert body["state"] == "error"
    assert body["results"][0]["error"]["code"] == "image.invalid"


async def test_unknown_tasks_and_routes_are_404_json(api: Api) -> None:
    for path in ("/v1/tasks/nope", "/v1/tasks/..%2F..%2Fetc", "/v1/tasks/nope/events", "/v2"):
        response = await api.client.get(path)
        assert response.status_code == 404, path
        assert error_code(response) in ("task.not_found", "http.not_found")
    response = await api.client.delete("/v1/uploads")
    assert (response.status_code, error_code(response)) == (405, "http.method_not_allowed")


def _json() -> dict[str, str]:
    return {"content-type": "application/json"}
