"""``GET /v1/outputs/{key}``: a task's output, from the blob store, to any client.

Only keys under ``outputs/`` are served (uploads and records never are); every key is checked
by the store's key rules first. A store whose URLs are ``http(s)`` (S3: presigned) is answered
with a redirect there, so the bytes never pass through the ingress; otherwise the bytes are
read and sent with their content type, an ``ETag`` (sha256 prefix; ``If-None-Match`` gets
``304``) and cache headers. Outputs derive from the task id and are rewritten identically on a
redelivery, so they may be cached.
"""

from __future__ import annotations

import hashlib
import mimetypes

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pixfleet.blobs import check_key
from producer.http.errors import NotFound
from producer.http.services import Services

OUTPUTS_PREFIX = "outputs/"
CACHE_CONTROL = "public, max-age=86400"
_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".png": "image/png"}


def content_type(key: str) -> str:
    suffix = key[key.rfind(".") :].lower() if "." in key.rsplit("/", 1)[-1] else ""
    return _TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


async def serve_output(key: str, request: Request, svc: Services) -> Response:
    """The output under ``key`` (or a redirect to it); 404 ``http.not_found`` for keys outside
    ``outputs/``, ``blob.not_found`` for missing ones."""
    if not key.startswith(OUTPUTS_PREFIX):
        raise NotFound(f"no output {key[:200]!r} (output keys start with {OUTPUTS_PREFIX!r})")
    check_key(key)
    url = svc.store.url_for(key)
    if url.startswith(("https://", "http://")):
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    data = await svc.store.read(key)
    etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
    headers = {
        "ETag": etag,
        "Cache-Control": CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
    }
    if etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=content_type(key), headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
