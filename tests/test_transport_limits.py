"""PROTOCOL section 9, transport: Engine.IO sessions capped per address and in total before the
token is checked, unconnected sessions dropped after the connect deadline, a total header
deadline, a per-address connection cap, and malformed Socket.IO packets that cost one warning
line, never a traceback. Real eventlet servers; strangers use other loopback addresses
(Linux routes all of 127/8 to lo), so /healthz from 127.0.0.1 is somebody else."""
import http.client
import json
import socket
import subprocess
import sys

import pytest
import requests
import websocket
from conftest import app_env

from support import ROOT, TIMEOUT, SocketIOClient, free_port, port_open, stop_process, wait_for

TOKEN = "t"
HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


def polling(server, method="GET", path=HANDSHAKE, body=None, source="127.0.0.1", timeout=TIMEOUT):
    """One Engine.IO polling request from `source`: (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "text/plain;charset=UTF-8"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def open_session(server, source="127.0.0.1") -> str:
    status, body = polling(server, source=source)
    assert status == 200, (status, body)
    return json.loads(body[1:])["sid"]


def alive(server, sid, source="127.0.0.1") -> bool:
    """A pong posted to a live session is 200; to a closed one 400 ("Invalid session")."""
    return polling(server, "POST", f"{HANDSHAKE}&sid={sid}", "3", source)[0] == 200


def websocket_session(server, source: str, token: str | None = None):
    """An Engine.IO websocket session from `source` (websocket-client on a bound socket):
    (101, the connection) or (the refusal's HTTP status, None). With `token`, Socket.IO connected."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT, source_address=(source, 0))
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
                                         socket=sock, timeout=TIMEOUT)
    except websocket.WebSocketBadStatusException as exc:
        sock.close()
        return exc.status_code, None
    assert ws.recv().startswith("0")
    if token:
        ws.send('40{"token":"%s"}' % token)
        assert ws.recv().startswith("40")
    return 101, ws


def member(server) -> SocketIOClient:
    return SocketIOClient(server.url, token=TOKEN)


def metric(server, name: str) -> float:
    text = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (EOF or reset), without waiting."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


def half_sent(port: int, source: str, count: int) -> list[socket.socket]:
    """`count` connections from `source` that sent a request line and one header, then nothing."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        except OSError:  # already refused
            pass
    return socks


def guarded(broker, tmp_path, server_for, async_mode="eventlet", **caps):
    return server_for(app_env(broker, tmp_path, ASYNC_MODE=async_mode, API_TOKEN=TOKEN, **caps), wait_connected=False)


@pytest.mark.parametrize("async_mode", ["eventlet", "threading"])
def test_sessions_from_one_address_are_capped_before_the_token(broker, tmp_path, server_for, async_mode):
    server = guarded(broker, tmp_path, server_for, async_mode, MAX_WEB_SESSIONS_PER_ADDRESS=5, MAX_WEB_SESSIONS=20)
    for _ in range(5):
        open_session(server, source="127.0.0.2")
    status, body = polling(server, source="127.0.0.2")
    assert status == 401, (status, body)
    assert open_session(server, source="127.0.0.3")  # another address has its own share
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_websocket_sessions_count_too_and_a_closed_one_frees_its_place(broker, tmp_path, server_for):
    server = guarded(broker, tmp_path, server_for, MAX_WEB_SESSIONS_PER_ADDRESS=5, MAX_WEB_SESSIONS=20)
    sessions = []
    try:
        for _ in range(5):
            status, ws = websocket_session(server, "127.0.0.4")
            assert status == 101
            sessions.append(ws)
        assert websocket_session(server, "127.0.0.4")[0] == 401
        assert polling(server, source="127.0.0.4")[0] == 401  # one share for both transports
        sessions.pop().close()
        wait_for(lambda: polling(server, source="127.0.0.4")[0] == 200, what="the closed websocket's place")
    finally:
        for ws in sessions:
            ws.close()


def test_a_full_server_evicts_the_oldest_unconnected_session_never_a_connected_one(broker, tmp_path, server_for):
    server = guarded(broker, tmp_path, server_for, MAX_WEB_SESSIONS=6, MAX_WEB_SESSIONS_PER_ADDRESS=50)
    members = [member(server) for _ in range(2)]
    try:
        strangers = [open_session(server, source="127.0.0.2") for _ in range(4)]  # 6: full
        assert open_session(server, source="127.0.0.3")  # a newcomer is admitted ...
        assert not alive(server, strangers[0], "127.0.0.2")  # ... the oldest stranger gave way
        assert metric(server, "chatroom_engineio_evicted_total") >= 1
        members += [member(server) for _ in range(4)]  # members too push strangers out
        assert all(client.connected for client in members)
        status, body = polling(server, source="127.0.0.5")  # every session connected: refused
        assert status == 401, (status, body)
        assert members[0].call("join", {"username": "Alice"})["ok"]
    finally:
        for client in members:
            client.close()


@pytest.mark.parametrize("async_mode", ["eventlet", "threading"])
def test_a_session_without_a_socketio_connect_is_dropped_a_member_stays(broker, tmp_path, server_for, async_mode):
    server = guarded(broker, tmp_path, server_for, async_mode)
    alice = member(server)
    try:
        sid = open_session(server, source="127.0.0.2")
        assert polling(server, "POST", f"{HANDSHAKE}&sid={sid}", "40", "127.0.0.2")[0] == 200  # no token

        def gone() -> bool:  # a client that answers every ping: only the deadline can end it
            status, body = polling(server, "GET", f"{HANDSHAKE}&sid={sid}", source="127.0.0.2", timeout=60)
            if status == 200 and "2" in body.split("\x1e"):
                polling(server, "POST", f"{HANDSHAKE}&sid={sid}", "3", "127.0.0.2")
            return status == 400 and "Invalid session" in body

        wait_for(gone, timeout=50, what="the token-less session dropped")
        assert alice.connected and alice.call("join", {"username": "Alice"})["ok"]
        assert metric(server, "chatroom_engineio_dropped_unconnected_total") >= 1
    finally:
        alice.close()


def test_a_trickling_request_is_closed_at_the_header_deadline(broker, tmp_path, server_for):
    server = guarded(broker, tmp_path, server_for, HEADER_TIMEOUT=2)
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    sock.settimeout(0.5)
    sent = [0]

    def closed() -> bool:
        try:
            if sock.recv(1) == b"":
                return True
        except socket.timeout:
            pass
        except OSError:
            return True
        try:  # one more header line: each byte restarted eventlet's socket timeout
            sock.sendall(b"X-Slow-%d: 1\r\n" % sent[0])
            sent[0] += 1
        except OSError:
            return True
        return False

    try:
        wait_for(closed, timeout=40, what="the server to close a trickling request")  # < SOCKET_TIMEOUT (60 s)
        assert sent[0] >= 1
    finally:
        sock.close()
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_connections_from_one_address_are_capped_and_healthz_answers(broker, tmp_path, server_for):
    server = guarded(broker, tmp_path, server_for, MAX_CONNECTIONS_PER_ADDRESS=20, HEADER_TIMEOUT=120)
    socks = half_sent(server.port, "127.0.0.2", 30)
    try:
        wait_for(lambda: sum(map(closed_by_server, socks)) >= 10, what="the connections over the share closed")
        assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200
        assert sum(map(closed_by_server, socks)) == 10  # 20 are held: the address's share
        assert polling(server, source="127.0.0.3")[0] == 200
    finally:
        for sock in socks:
            sock.close()


def test_an_address_whose_connections_are_all_busy_is_refused(broker, tmp_path, server_for):
    server = guarded(broker, tmp_path, server_for, MAX_CONNECTIONS_PER_ADDRESS=3)
    members, extra = [], None
    try:
        for _ in range(3):
            status, ws = websocket_session(server, "127.0.0.2", token=TOKEN)
            assert status == 101
            members.append(ws)
        extra = half_sent(server.port, "127.0.0.2", 1)[0]
        wait_for(lambda: closed_by_server(extra), what="the connection over a busy address's share closed")
        assert not any(closed_by_server(ws.sock) for ws in members)  # the websockets were not touched
        assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200
    finally:
        for ws in members:
            ws.close()
        if extra is not None:
            extra.close()


GATE_SERVER = """
import warnings
warnings.filterwarnings("ignore", message="\\s*Eventlet is deprecated")
import eventlet
eventlet.monkey_patch()
import sys
sys.path.insert(0, sys.argv[2])
from chatroom.web.serving import ConnectionGate, serve_wsgi

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]

serve_wsgi(app, "127.0.0.1", int(sys.argv[1]), ConnectionGate(size=5, per_address=100, header_timeout=120))
"""


def test_a_full_server_closes_the_longest_waiting_connection_for_a_newcomer(tmp_path):
    """Every green thread held by a half-sent request: the accept loop does not block, the
    oldest gives way (eventlet's GreenPool would have waited for a free slot)."""
    port = free_port()
    log = open(tmp_path / "gate.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", GATE_SERVER, str(port), str(ROOT)], stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    socks = []
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, what="the gate server")
        assert proc.poll() is None, (tmp_path / "gate.log").read_text()
        socks = half_sent(port, "127.0.0.2", 5)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).text == "ok"
        wait_for(lambda: closed_by_server(socks[0]), what="the longest-waiting connection closed")
        assert not any(map(closed_by_server, socks[2:]))
    finally:
        for sock in socks:
            sock.close()
        stop_process(proc)
    assert "Traceback" not in (tmp_path / "gate.log").read_text()


MALFORMED = ['42[{"a":1}]', "42", "42[]", "42[1]", '42["join"', "4x", '42["join",{},2]', '42["disconnect"]',
             '42["connect",{"token":"t"}]', '451-/elsewhere,["a",{"_placeholder":true,"num":0}]',
             '451-[{"a":1},{"_placeholder":true,"num":0}]']


def test_malformed_socketio_packets_cost_a_few_warning_lines_and_no_traceback(broker, tmp_path, server_for):
    server = guarded(broker, tmp_path, server_for)
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
                                     timeout=TIMEOUT)
    try:
        assert ws.recv().startswith("0")
        ws.send('40{"token":"%s"}' % TOKEN)
        assert ws.recv().startswith("40")
        for _ in range(50):
            for packet in MALFORMED:
                ws.send(packet)
                if packet.startswith("451-["):
                    ws.send_binary(b"x")  # the attachment that completes the binary event
        ws.send('421["leave",{}]')  # still served, in order, after 550 bad packets
        while not (frame := ws.recv()).startswith("431"):
            if frame == "2":
                ws.send("3")
        assert json.loads(frame[3:]) == [{"ok": True}]
    finally:
        ws.close()
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200
    server.stop()
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert len(warnings) <= 40, "\n".join(warnings[:60])


def test_a_flood_of_refusals_is_two_log_lines_with_the_counts(caplog):
    import logging

    from chatroom.ops.logs import FloodEpisode

    clock = [0.0]
    episode = FloodEpisode(logging.getLogger("test.flood"), "caps", quiet=10.0, now=lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="test.flood")
    for second in range(30):
        clock[0] = float(second)
        for _ in range(1000):
            episode.record("refused address", "'127.0.0.2'")
        episode.record("evicted")
        episode.tick()
    clock[0] = 40.0
    episode.tick()
    episode.tick()
    assert [record.getMessage() for record in caplog.records] == [
        "caps: refused address ('127.0.0.2')", "caps: over after 29 s: 30000 refused address, 30 evicted"]


def trickled_body(server, head: bytes, source: str = "127.0.0.2") -> tuple[bytes, bool]:
    """Send `head` (a request with a big Content-Length and one byte of body), then one body
    byte at a time: (what the server answered, whether it closed the connection)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(head + b"x")
    sock.settimeout(0.5)
    answer = bytearray()

    def closed() -> bool:
        try:
            chunk = sock.recv(4096)
            if chunk == b"":
                return True
            answer.extend(chunk)
        except socket.timeout:
            pass
        except OSError:
            return True
        try:
            sock.sendall(b"x")  # each byte renewed eventlet's socket timeout
        except OSError:
            return True
        return False

    try:
        finished = wait_for(closed, timeout=40, what="the server to close a trickled body")
        return bytes(answer), finished
    finally:
        sock.close()


def test_a_trickled_body_the_server_does_not_read_is_not_drained(broker, tmp_path, server_for):
    """Review of issue 21: `POST /healthz` with a 1 GB Content-Length, then a byte every few
    seconds: the 401/405 went out, then eventlet read on to drain the body, for ever, and ~42
    addresses of such connections refused everyone. The connection is closed instead."""
    server = guarded(broker, tmp_path, server_for, HEADER_TIMEOUT=2)
    answer, closed = trickled_body(server, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
    assert closed and answer.startswith(b"HTTP/1.1 405")
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_a_trickled_body_the_server_reads_has_a_deadline(broker, tmp_path, server_for):
    """A body that the route reads (16 KiB at most) must arrive within HEADER_TIMEOUT too."""
    server = guarded(broker, tmp_path, server_for, HEADER_TIMEOUT=2)
    head = (b"POST /api/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 16000\r\n\r\n")
    answer, closed = trickled_body(server, head)
    assert closed and answer.startswith(b"HTTP/1.1 400"), answer[:200]  # a JSON error, then closed
    assert "Traceback" not in server.logs(whole=True)


def test_a_malformed_chunked_body_is_400_not_500(broker, tmp_path, server_for):
    server = guarded(broker, tmp_path, server_for)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /api/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert "Traceback" not in server.logs(whole=True)


def test_closed_websockets_with_long_host_headers_cost_a_few_log_lines(broker, tmp_path, server_for):
    """eventlet writes a line to wsgi.errors when a websocket closes badly, with the Host header
    in it and no newline: 300 such closes were 2.4 MB of log. Now a few throttled lines."""
    server = guarded(broker, tmp_path, server_for)
    before = len(server.logs(whole=True))
    request = (f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {'h' * 8000}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(request)
            sock.recv(4096)  # the 101
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200
    wait_for(lambda: metric(server, "chatroom_engineio_sessions") == 0, what="the sessions gone")
    grown = len(server.logs(whole=True)) - before
    assert grown < 20_000, server.logs()[-2000:]
