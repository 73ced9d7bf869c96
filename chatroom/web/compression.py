"""gzip for the page's text (HTML, CSS, JavaScript, SVG) when the client accepts it.

The page's files are ~55 KiB of text, ~15 KiB gzipped (issue 27). Static files are
compressed once per version (their ETag) and kept; the pages themselves are small and
compressed per response. JSON answers and Socket.IO stay as they are: they are small,
and compressing what a stranger can make us send costs CPU (docs/SECURITY.md).
"""
from __future__ import annotations

import gzip
import mimetypes

from flask import Flask, Response, request

COMPRESSED_TYPES = frozenset({"text/html", "text/css", "text/javascript", "application/javascript",
                              "image/svg+xml"})
MIN_BYTES = 512          # below this the gzip header costs more than it saves
MAX_CACHED = 32          # static files kept compressed (the page has a handful)
_cache: dict[tuple[str, str], bytes] = {}


GZIP_TAG = "-gzip"        # the gzipped form's ETag: the file's ETag with this after it


def gzip_text(response: Response) -> Response:
    if response.status_code == 304:  # a 304 has no Content-Type: the file's name says what it is
        if mimetypes.guess_type(request.path)[0] in COMPRESSED_TYPES:
            response.vary.add("Accept-Encoding")  # as its 200 did: a cache keeps the forms apart
        return response
    if response.mimetype not in COMPRESSED_TYPES or response.status_code != 200:
        return response
    response.vary.add("Accept-Encoding")  # caches keep the two forms apart
    if "Content-Encoding" in response.headers or request.accept_encodings["gzip"] <= 0:
        return response
    response.direct_passthrough = False  # a static file is a stream: read it here
    body = response.get_data()
    if len(body) < MIN_BYTES:
        return response
    etag, _ = response.get_etag()
    if etag and request.if_none_match.contains(etag + GZIP_TAG):  # the client has this very form
        response.set_etag(etag + GZIP_TAG)
        response.status_code = 304
        response.set_data(b"")
        response.headers.pop("Content-Length", None)
        return response
    key = (request.path, etag or "")
    compressed = _cache.get(key) if etag else None
    if compressed is None:
        compressed = gzip.compress(body, compresslevel=6, mtime=0)
        if etag:
            if len(_cache) >= MAX_CACHED:
                _cache.pop(next(iter(_cache)))
            _cache[key] = compressed
    response.set_data(compressed)
    response.headers["Content-Encoding"] = "gzip"
    # Byte ranges would count the plain file's bytes: none are offered for the gzipped form
    # (a Range request is answered by the file server, 206, uncompressed).
    response.headers.pop("Accept-Ranges", None)
    if etag:  # other bytes, another entity tag (RFC 9110 8.8.3): a cache never mixes the forms
        response.set_etag(etag + GZIP_TAG)
    return response


def install(app: Flask) -> None:
    app.after_request(gzip_text)
