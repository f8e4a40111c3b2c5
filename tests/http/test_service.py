"""The rest of the contract in-process: events, outputs, auth, health, metrics, overload,
broker failures and bugs - each answered as the API promises."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from brokers.contract import Transport
from pixfleet.blobs import store_output
from pixfleet.envelope import Task
from pixfleet.errors import BrokerBlocked, PublishFailed
from pixfleet.records import read_task, record_result
from tests.helpers import images
from tests.helpers.tasks import make_result
from tests.http.inprocess import Api, files, parse_sse, running_api

JPEG = images.jpeg_bytes(320, 240)
TOKEN = "s3cret-token-of-the-tests"


async def _upload(api: Api, *, groups: str = "thumbs") -> Task:
    response = await api.client.post(
        "/v1/uploads", files=files(("a.jpg", JPEG)), data={"groups": groups}
    )
    assert response.status_code == 202, response.text
    task = await read_task(api.store, response.json()["tasks"][0]["task_id"])
    assert task is not None
    return task


async def test_events_send_one_result_per_group_then_done(api: Api) -> None:
    task = await _upload(api, groups="thumbs,faces")
    await record_result(api.store, make_result(task, "thumbs"))

    async def later() -> None:
        await asyncio.sleep(0.2)  # while the stream is open and polling
        await record_result(api.store, make_result(task, "faces", ok=False))

    writer = asyncio.create_task(later())
    response = await api.client.get(f"/v1/tasks/{task.id}/events")
    await writer
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    assert response.text.startswith("retry: ")
    events = parse_sse(response.text)
    assert [(e, d.get("group")) for e, d in events] == [
        ("result", "thumbs"),
        ("result", "faces"),
        ("done", None),
    ]
    assert events[-1][1] == {"task_id": task.id, "state": "error"}


async def test_events_end_without_done_when_draining(api: Api) -> None:
    task = await _upload(api)
    api.services.draining = True
    response = await api.client.get(f"/v1/tasks/{task.id}/events")
    assert response.status_code == 200
    assert parse_sse(response.text) == []  # the client reconnects, to another instance


async def test_outputs_are_served_with_type_etag_and_cache_headers(api: Api) -> None:
    key = await store_output(
        api.store, "t1", "thumbs", "256.webp", b"RIFF....WEBPVP8 ", source_sha256="ab" * 32
    )
    response = await api.client.get(f"/v1/outputs/{key}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/webp"
    assert "max-age" in response.headers["cache-control"]
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]
    cached = await api.client.get(f"/v1/outputs/{key}", headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b""
    head = await api.client.head(f"/v1/outputs/{key}")
    assert head.status_code == 200


async def test_only_outputs_are_served(api: Api) -> None:
    task = await _upload(api)
    for key in (task.blob.uri, f"records/tasks/{task.id[:2]}/{task.id}.json", "outputs/../x"):
        response = await api.client.get(f"/v1/outputs/{key}")
        assert response.status_code == 404, key
    missing = await api.client.get("/v1/outputs/outputs/thumbs/ab/abc/256.jpg")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "blob.not_found")


async def test_an_object_store_output_is_a_redirect(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.store, "url_for", lambda key: f"https://bucket.example/{key}?sig=1")
    response = await api.client.get("/v1/outputs/outputs/thumbs/ab/abc/256.jpg")
    assert response.status_code == 307
    assert (
        response.headers["location"] == "https://bucket.example/outputs/thumbs/ab/abc/256.jpg?sig=1"
    )


async def test_a_token_guards_the_api_but_not_health(tmp_path: Path) -> None:
    async with running_api(tmp_path, token=TOKEN) as api:
        refused = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)))
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "auth.required")
        wrong = await api.client.get("/v1/tasks/x", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await api.client.post(
            "/v1/uploads",
            files=files(("a.jpg", JPEG)),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert ok.status_code == 202
        task_id = ok.json()["tasks"][0]["task_id"]
        by_query = await api.client.get(f"/v1/tasks/{task_id}?access_token={TOKEN}")
        assert by_query.status_code == 200
        for path in ("/healthz", "/readyz", "/", "/static/app.js"):
            assert (await api.client.get(path)).status_code == 200, path


async def test_health_readiness_and_draining(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}
    api.services.draining = True
    unready = await api.client.get("/readyz")
    assert (unready.status_code, unready.json()["error"]["code"]) == (503, "ingress.draining")
    refused = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)))
    assert refused.status_code == 503 and refused.headers["retry-after"]


async def test_metrics_count_uploads_and_errors(api: Api) -> None:
    await _upload(api)
    await api.client.post("/v1/uploads", files=files(("n.txt", b"text")))
    text = (await api.client.get("/metrics")).text
    assert "pixfleet_uploads_total 1.0" in text
    assert f"pixfleet_upload_bytes_total {float(len(JPEG))}" in text
    assert 'pixfleet_http_errors_total{code="input.not_image",status="415"} 1.0' in text
    assert "pixfleet_publish_seconds_count 1.0" in text
    assert 'pixfleet_group_ready{group="thumbs"} 1.0' in text  # no worker: the task waits


async def test_too_many_uploads_in_flight_is_429(api: Api) -> None:
    api.services.in_flight = api.services.settings.limits.max_in_flight
    response = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)))
    assert (response.status_code, response.json()["error"]["code"]) == (429, "ingress.busy")
    assert response.headers["retry-after"] == "1"


async def test_a_broker_that_is_down_is_503(api: Api) -> None:
    await api.transport.__aexit__(None, None, None)
    response = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)))
    assert response.status_code == 503
    assert response.json()["error"]["code"].startswith("broker.")
    assert (await api.client.get("/readyz")).status_code == 503


async def test_a_half_published_batch_says_which_tasks_were_confirmed(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport: Transport = api.transport
    publish = transport.publish
    calls = 0

    async def flaky(task: Task) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise PublishFailed("the broker did not confirm (test)")
        await publish(task)

    monkeypatch.setattr(transport, "publish", flaky)
    two = files(("a.jpg", JPEG), ("b.jpg", images.jpeg_bytes(100, 80)))
    response = await api.client.post("/v1/uploads", files=two)
    assert response.status_code == 503
    body = response.json()
    assert body["error"]["code"] == "broker.publish_failed"
    assert [t["filename"] for t in body["tasks"]] == ["a.jpg"]
    assert await api.ready() == 1


async def test_a_bug_is_a_500_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_api(tmp_path, raise_app_exceptions=False) as api:

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internals")

        monkeypatch.setattr("producer.http.routes.task_state", broken)
        response = await api.client.get("/v1/tasks/abc")
        assert response.status_code == 500
        assert response.json() == {
            "error": {
                "code": "internal.error",
                "message": "internal error (the server log has the details)",
            }
        }
        assert "Traceback" not in response.text and "secret" not in response.text


async def test_the_openapi_document_describes_the_contract(api: Api) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    assert {"/v1/uploads", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/events"} <= set(doc["paths"])
    upload = doc["paths"]["/v1/uploads"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"202", "413", "415"} <= set(upload["responses"])
    page = await api.client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text


async def test_a_page_served_under_a_prefix_links_relative(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        asgi = httpx.ASGITransport(app=api.app, root_path="/ingress")
        async with httpx.AsyncClient(transport=asgi, base_url="http://lb") as client:
            response = await client.post("/ingress/v1/uploads", files=files(("a.jpg", JPEG)))
            assert response.status_code == 202, response.text
            assert response.json()["tasks"][0]["status_url"].startswith("/ingress/v1/tasks/")


async def test_a_blocked_broker_is_429(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    async def blocked(task: Task) -> None:
        raise BrokerBlocked("memory alarm (test)")

    monkeypatch.setattr(api.transport, "publish", blocked)
    response = await api.client.post("/v1/uploads", files=files(("a.jpg", JPEG)))
    assert (response.status_code, response.json()["error"]["code"]) == (429, "broker.blocked")
    assert response.headers["retry-after"] == "5"
