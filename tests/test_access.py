"""PROTOCOL section 9, access: with API_TOKEN every route with room content, the status and the
metrics need it (HTTP and Socket.IO connect), /healthz and the page stay open; every response
carries the security headers; Engine.IO refuses packets over 64 KiB. Real eventlet server."""
import pytest
import requests
import socketio
from conftest import app_env

from support import TIMEOUT, SocketIOClient, wait_for

TOKEN = "s3cret-token"
PROTECTED = [("get", "/api/messages"), ("post", "/api/messages"), ("get", "/api/users"),
             ("get", "/api/readings?client_id=dev&key=t"), ("get", "/mqtt/status"), ("get", "/metrics")]


@pytest.fixture
def guarded(broker, tmp_path, server_for):
    return server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", API_TOKEN=TOKEN), wait_connected=False)


def call(server, method, path, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs = {"json": {"username": "cron", "message": "hi"}} if method == "post" else {}
    return requests.request(method, server.url + path, headers=headers, timeout=TIMEOUT, **kwargs)


def test_every_protected_route_needs_the_token(guarded):
    wait_for(lambda: call(guarded, "get", "/mqtt/status", TOKEN).status_code == 200, what="bridge connected")
    for method, path in PROTECTED:
        for token in (None, "wrong", TOKEN[:-1]):
            response = call(guarded, method, path, token)
            assert response.status_code == 401 and response.json()["code"] == "unauthorized", (path, token)
        assert call(guarded, method, path, TOKEN).status_code in (200, 201), path
    assert call(guarded, "get", "/healthz").status_code == 200
    page = call(guarded, "get", "/")
    assert page.status_code == 200 and 'data-token-required="true"' in page.text


def test_socketio_connect_needs_the_token(guarded):
    with pytest.raises(socketio.exceptions.ConnectionError):
        SocketIOClient(guarded.url, token="nope")
    with SocketIOClient(guarded.url, token=TOKEN) as member:
        assert member.call("join", {"username": "Alice"})["ok"]


def test_security_headers_on_every_response(broker, tmp_path, server_for):
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet"))
    for path in ("/", "/api/messages", "/healthz", "/static/chat.js", "/no/such/page"):
        headers = requests.get(server.url + path, timeout=TIMEOUT).headers
        assert headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'", path
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY", path


def test_a_socketio_packet_over_64_kib_is_refused_before_parsing(broker, tmp_path, server_for):
    """70 KB in one event: the server drops that connection; it stays up for everyone else."""
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet"))
    big = SocketIOClient(server.url)
    assert big.call("join", {"username": "Bulky"})["ok"]
    with pytest.raises(socketio.exceptions.TimeoutError):
        big.call("send_message", {"message": "x" * 70_000}, timeout=5)
    wait_for(lambda: not big.connected, what="the oversized client dropped")
    with SocketIOClient(server.url) as fine:
        assert fine.call("join", {"username": "Fine"})["ok"]
        ack = fine.call("send_message", {"message": "y" * 60_000})  # under 64 KiB: too_long
        assert ack["code"] == "too_long"
