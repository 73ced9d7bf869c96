"""Deployed as the docs say (issue 22): the docs' own blocks, run for real.

The nginx blocks are extracted from docs/DEPLOYMENT.md and docs/SCALING.md (their ```nginx
fences; only the listen port and the upstream addresses are substituted), wrapped in an
nginx.conf of the test's own (daemon off, pid, logs and temp paths in the test's directory)
and run with Debian's nginx on a free port that is not 80, in front of real `python app.py`
processes. The systemd unit is extracted from DEPLOYMENT.md (its ```ini fence, /opt/chatroom
filled in) and checked by `systemd-analyze verify`. The shipped mosquitto.conf is run as
root without `user root`, as DEPLOYMENT.md says, and must keep a persistent session across
a restart. The cluster lines of acl.example are run in a real mosquitto with two instances.

On one machine every client is 127.0.0.1 to nginx, so distinct clients are made with other
loopback source addresses (127.0.0.2, 127.0.0.3, ...): nginx sees them as distinct
$remote_addr, which is what distinct browsers are to it.

Every process is started here and stopped by its PID; nothing sleeps a fixed time.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from browser_support import open_chat, send
from conftest import app_env
from playwright.sync_api import expect

from support import (
    ROOT,
    TIMEOUT,
    Mosquitto,
    MqttProbe,
    free_port,
    password_file,
    stop_process,
    wait_for,
    wait_listening,
)
from tools.ensure_broker import shipped_conf

DOCS = ROOT / "docs"
DEPLOYMENT = DOCS / "DEPLOYMENT.md"
SCALING = DOCS / "SCALING.md"
MOSQUITTO_CONF = ROOT / "clients" / "mosquitto" / "mosquitto.conf"
DEVICES_CONF = ROOT / "clients" / "mosquitto" / "mosquitto-devices.conf"
ACL_EXAMPLE = ROOT / "clients" / "mosquitto" / "acl.example"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
# The doc's upstream addresses, in the order the test's instances replace them.
DOC_UPSTREAMS = ("127.0.0.1:5000", "127.0.0.1:5001")


# --- the docs' blocks ------------------------------------------------------------------------

def fenced(doc: Path, lang: str) -> list[str]:
    """The bodies of the ```<lang> fences of a doc, in order."""
    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```", doc.read_text(), flags=re.M | re.S)


def the_block(doc: Path, lang: str) -> str:
    blocks = fenced(doc, lang)
    assert len(blocks) == 1, f"{doc.name}: expected one ```{lang} block, found {len(blocks)}"
    return blocks[0]


def nginx_site(block: str, port: int, upstreams: list[int]) -> str:
    """The doc's block with only its listen port and upstream addresses replaced.

    A bare `location` block (how DEPLOYMENT.md once showed it) is put in a server of its own
    listening on 80, as a reader would have done."""
    if not re.search(r"^\s*server\s*\{", block, flags=re.M):
        block = "server {\n    listen 80;\n" + block + "}\n"
    block, listens = re.subn(r"^(\s*)listen 80;", rf"\g<1>listen 127.0.0.1:{port};", block, flags=re.M)
    assert listens == 1, "the block should listen on 80 once"
    for doc_address, real in zip(DOC_UPSTREAMS, upstreams, strict=False):
        block, found = re.subn(rf"{re.escape(doc_address)}(?!\d)", f"127.0.0.1:{real}", block)
        assert found, f"the block has no upstream {doc_address}"
    return block


class Nginx:
    """Debian's nginx in the foreground with a config of this test's, on a free port."""

    def __init__(self, workdir: Path, site: str, port: int):
        # Never skipped: a missing nginx must fail (`make test` installs Debian's).
        assert os.path.exists(NGINX), "nginx is not installed: run `make test` (apt-get install nginx)"
        self.workdir, self.site, self.port = workdir, site, port
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "nginx.conf"
        self.error_log = workdir / "error.log"
        self.access_log = workdir / "access.log"
        self.proc: subprocess.Popen | None = None

    def write_conf(self) -> None:
        temp = "".join(f"    {kind}_temp_path {self.workdir}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf.write_text(
            "daemon off;\n"
            # As root the workers would switch to `nobody`, who cannot enter the test's tmp dir.
            + ("user root;\n" if os.geteuid() == 0 else "")
            + "worker_processes 1;\n"
            f"pid {self.workdir}/nginx.pid;\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            "    log_format upstream '$remote_addr \"$request\" $status $upstream_addr';\n"
            f"    access_log {self.access_log} upstream;\n"
            + temp
            + self.site
            + "}\n")

    def start(self) -> "Nginx":
        self.write_conf()
        command = [NGINX, "-p", str(self.workdir), "-e", str(self.error_log), "-c", str(self.conf)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_listening(self.proc, self.port, "nginx", self.error_log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)  # nginx's fast shutdown
            self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        """What a browser on the page sends as Origin: the port included."""
        return self.url

    def log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []


@pytest.fixture
def nginx_for(tmp_path):
    """nginx_for(doc, app_ports) runs the doc's nginx block in front of the app ports."""
    started: list[Nginx] = []

    def make(doc: Path, ports: list[int], edit=lambda block: block) -> Nginx:
        port = free_port()
        site = nginx_site(edit(the_block(doc, "nginx")), port, ports)
        started.append(Nginx(tmp_path / f"nginx-{len(started)}", site, port).start())
        return started[-1]

    yield make
    for nginx in started:
        nginx.stop()


# --- clients from a chosen loopback address --------------------------------------------------

def request(port: int, method: str, path: str, source: str = "127.0.0.1", body=None,
            headers: dict | None = None) -> tuple[int, str]:
    """One HTTP request to 127.0.0.1:`port` from the source address `source`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT, source_address=(source, 0))
    try:
        payload = json.dumps(body) if isinstance(body, (dict, list)) else body
        headers = {**({"Content-Type": "application/json"} if isinstance(body, (dict, list)) else {}),
                   **(headers or {})}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def post_message(port: int, source: str, username: str, text: str, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    status, _ = request(port, "POST", "/api/messages", source,
                        {"username": username, "message": text}, headers)
    return status


def instance_of(port: int, source: str) -> str:
    """The INSTANCE_ID that answers a request from `source` (through nginx on `port`)."""
    status, body = request(port, "GET", "/mqtt/status", source)
    assert status == 200, body
    return json.loads(body)["instance_id"]


def engineio_polling_connect(port: int, origin: str, source: str = "127.0.0.1") -> str:
    """Engine.IO's handshake over long-polling and Socket.IO's connect, as the page's
    fallback does them (three requests that must reach one instance). Returns the sid."""
    path = "/socket.io/?EIO=4&transport=polling"
    headers = {"Origin": origin}
    status, body = request(port, "GET", path, source, headers=headers)
    assert status == 200 and body.startswith("0"), f"Engine.IO handshake: {status} {body[:200]}"
    sid = json.loads(body[1:])["sid"]
    status, body = request(port, "POST", f"{path}&sid={sid}", source, "40", {**headers, "Content-Type": "text/plain"})
    assert (status, body.lower()) == (200, "ok"), f"Socket.IO connect over polling: {status} {body[:200]}"
    status, body = request(port, "GET", f"{path}&sid={sid}", source, headers=headers)
    assert status == 200 and any(packet.startswith("40{") for packet in body.split("\x1e")), \
        f"Socket.IO connect not acknowledged over polling: {status} {body[:200]}"
    return sid


def upgrade_to_websocket(port: int, sid: str, origin: str, source: str = "127.0.0.1"):
    """The upgrade of a polling session to a websocket (101), with Engine.IO's probe."""
    import websocket  # websocket-client

    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&sid={sid}",
                                     origin=origin, timeout=TIMEOUT, socket=sock)
    assert ws.getstatus() == 101
    ws.send("2probe")
    assert ws.recv() == "3probe"
    ws.send("5")  # upgrade: polling is done
    return ws


def websocket_call(ws, ack: int, event: str, data: dict) -> dict:
    """A Socket.IO event with an ack over a raw websocket; the ack's first argument."""
    ws.send(f"42{ack}" + json.dumps([event, data]))
    while True:
        frame = ws.recv()
        if frame == "2":
            ws.send("3")
        elif frame.startswith(f"43{ack}["):
            return json.loads(frame[len(f"43{ack}"):])[0]


class Site:
    """What open_chat needs of a server: its URL (here nginx's)."""

    def __init__(self, url: str):
        self.url = url


# --- DEPLOYMENT.md's nginx block ---------------------------------------------------------------

def test_deployment_nginx_block_serves_the_page_and_socketio_on_a_port_that_is_not_80(
        broker, tmp_path, server_for, nginx_for, browser):
    """Through the doc's block on a free port: the page loads, Engine.IO's handshake over
    polling and the websocket upgrade (101) pass Socket.IO's origin check with the browser's
    Origin (port included), another site's Origin is still refused, and chromium's page
    connects over a websocket through nginx and chats."""
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", TRUSTED_PROXIES=1))
    nginx = nginx_for(DEPLOYMENT, [server.port])
    assert nginx.port != 80

    status, page = request(nginx.port, "GET", "/")
    assert status == 200 and 'id="join-form"' in page

    # A raw client at 127.0.0.2 (chromium is 127.0.0.1 in nginx's log).
    sid = engineio_polling_connect(nginx.port, nginx.origin, "127.0.0.2")
    ws = upgrade_to_websocket(nginx.port, sid, nginx.origin, "127.0.0.2")
    try:
        ack = websocket_call(ws, 0, "join", {"username": "Through nginx", "room": "lobby"})
        assert ack["ok"], ack
    finally:
        ws.close()

    # The origin policy still holds behind nginx: another site's page is refused.
    status, body = request(nginx.port, "GET", "/socket.io/?EIO=4&transport=polling", "127.0.0.2",
                           headers={"Origin": "http://evil.example"})
    assert status == 400, body

    page = open_chat(browser, Site(nginx.url), "Browser")
    send(page, "hello through nginx")
    expect(page.locator(".msg .text", has_text="hello through nginx")).to_have_count(1)
    history = requests.get(server.url + "/api/messages", timeout=TIMEOUT).json()["messages"]
    assert [m["content"] for m in history if m["username"] == "Browser"] == ["hello through nginx"]
    page.context.close()
    # The page went straight to a websocket through nginx (101; nginx logs it once closed),
    # never to long-polling.
    browser_lines = lambda: [line for line in nginx.log_lines()  # noqa: E731
                             if line.startswith("127.0.0.1 ") and "/socket.io/" in line]
    wait_for(lambda: any("transport=websocket" in line and '" 101 ' in line for line in browser_lines()),
             what="the page's websocket in nginx's log")
    assert not any("transport=polling" in line for line in browser_lines()), browser_lines()


def test_deployment_nginx_block_gives_each_client_its_own_bucket_and_ignores_a_sent_x_forwarded_for(
        broker, tmp_path, server_for, nginx_for):
    """TRUSTED_PROXIES=1 behind the doc's block, RATE_LIMIT=2/60 (an HTTP caller's bucket is
    its address): a client sending its own X-Forwarded-For cannot pick a fresh bucket (its
    third post is 429 whatever it sends), and two clients at different addresses have a
    bucket each."""
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", TRUSTED_PROXIES=1, RATE_LIMIT="2/60"))
    nginx = nginx_for(DEPLOYMENT, [server.port])

    first, second = "127.0.0.2", "127.0.0.3"
    assert post_message(nginx.port, first, "Ann", "one", forwarded_for="1.2.3.4") == 201
    assert post_message(nginx.port, first, "Ann", "two", forwarded_for="5.6.7.8") == 201
    assert post_message(nginx.port, first, "Ann", "three", forwarded_for="9.9.9.9") == 429
    assert post_message(nginx.port, first, "Ann", "four") == 429
    # Another client (another address to nginx) has a bucket of its own.
    assert post_message(nginx.port, second, "Bob", "one", forwarded_for="1.2.3.4") == 201
    assert post_message(nginx.port, second, "Bob", "two") == 201
    assert post_message(nginx.port, second, "Bob", "three") == 429
    history = requests.get(server.url + "/api/messages", timeout=TIMEOUT).json()["messages"]
    assert sorted((m["username"], m["content"]) for m in history) == [
        ("Ann", "one"), ("Ann", "two"), ("Bob", "one"), ("Bob", "two")]


# --- SCALING.md's nginx block --------------------------------------------------------------------

def cluster_env(broker, redis_server, tmp_path, index: int, prefix: str, group: str) -> dict:
    return app_env(broker, tmp_path, ASYNC_MODE="eventlet", MQTT_TOPIC_PREFIX=prefix, REDIS_URL=redis_server.url,
                   MQTT_SHARED_GROUP=group, DATABASE_PATH=str(tmp_path / "shared.db"), TRUSTED_PROXIES=1,
                   INSTANCE_ID=f"i{index}", MQTT_CLIENT_ID=f"{prefix}-bridge-{index}")


def spread(nginx: Nginx, wanted: set[str]) -> dict[str, str]:
    """Which instance each loopback address lands on, from 127.0.0.1 on, until every
    instance in `wanted` has been seen (at least 8 addresses)."""
    landed: dict[str, str] = {}
    for last in range(1, 255):
        address = f"127.0.0.{last}"
        landed[address] = instance_of(nginx.port, address)
        if last >= 8 and set(landed.values()) >= wanted:
            break
    return landed


def test_scaling_nginx_block_keeps_each_browser_on_one_instance_and_shares_the_room(
        broker, redis_server, tmp_path, server_for, nginx_for, browser):
    """Two instances (REDIS_URL, MQTT_SHARED_GROUP) behind the doc's block: addresses are
    spread over both instances and each stays on its own (so the long-polling handshake,
    three requests, completes through nginx); with `ip_hash` instead, 127.0.0.x would all
    land on one instance, as the doc says; and chromium's page through nginx sees a message
    posted on the other instance."""
    prefix, group = f"t{uuid.uuid4().hex[:10]}", f"g{uuid.uuid4().hex[:6]}"
    servers = [server_for(cluster_env(broker, redis_server, tmp_path, index, prefix, group)) for index in (0, 1)]
    nginx = nginx_for(SCALING, [server.port for server in servers])

    landed = spread(nginx, {"i0", "i1"})
    assert set(landed.values()) == {"i0", "i1"}, landed
    for address, instance in landed.items():  # sticky: the same address, the same instance
        assert instance_of(nginx.port, address) == instance
    for instance in ("i0", "i1"):
        address = next(a for a, i in landed.items() if i == instance)
        engineio_polling_connect(nginx.port, nginx.origin, address)

    assert "hash $remote_addr consistent;" in the_block(SCALING, "nginx")
    by_ip_hash = nginx_for(SCALING, [server.port for server in servers],
                           lambda block: block.replace("hash $remote_addr consistent;", "ip_hash;"))
    assert len({instance_of(by_ip_hash.port, address) for address in landed}) == 1

    page = open_chat(browser, Site(nginx.url), "Watcher")
    here = landed["127.0.0.1"]  # chromium connects from 127.0.0.1
    other = servers[0] if here == "i1" else servers[1]
    response = requests.post(other.url + "/api/messages", json={"username": "cron", "message": "from the other one"},
                             timeout=TIMEOUT)
    assert response.status_code == 201
    expect(page.locator(".msg .text", has_text="from the other one")).to_have_count(1)
    send(page, "from the page")
    wait_for(lambda: any(m["content"] == "from the page" for m in
                         requests.get(other.url + "/api/messages", timeout=TIMEOUT).json()["messages"]),
             what="the page's message in the other instance's history")
    page.context.close()


# --- DEPLOYMENT.md's systemd unit ------------------------------------------------------------------

def test_deployment_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    """The doc's unit with /opt/chatroom replaced by a directory of the test's own (its
    .venv a link to this checkout's, app.py a copy): `systemd-analyze verify` finds nothing
    to say. It needs the ExecStart binary to exist; it does not check the user."""
    assert os.path.exists(SYSTEMD_ANALYZE), "systemd-analyze missing at /usr/bin/systemd-analyze"
    unit = the_block(DEPLOYMENT, "ini")
    for line in ("User=chatroom", "WorkingDirectory=/opt/chatroom", "[Install]"):
        assert f"\n{line}\n" in f"\n{unit}", f"the unit lost {line!r}"
    home = tmp_path / "opt-chatroom"
    home.mkdir()
    (home / ".venv").symlink_to(ROOT / ".venv")
    shutil.copy(ROOT / "app.py", home / "app.py")
    (home / "data").mkdir()
    filled = tmp_path / "chatroom.service"
    filled.write_text(unit.replace("/opt/chatroom", str(home)))
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(filled)], capture_output=True, text=True, timeout=60)
    said = [line for line in (result.stdout + result.stderr).splitlines() if "chatroom.service" in line]
    assert result.returncode == 0 and not said, result.stdout + result.stderr


# --- the shipped mosquitto.conf, run as root ----------------------------------------------------------

def as_root() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    reason = "starting mosquitto as root needs root or passwordless sudo"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def persistent_subscriber(port: int, client_id: str, topic: str) -> MqttProbe:
    return MqttProbe(port, topic, client_id=client_id, clean_session=False).start()


def test_shipped_mosquitto_conf_run_as_root_keeps_a_persistent_session_across_a_restart(tmp_path):
    """clients/mosquitto/mosquitto.conf started as root (no `user root`: mosquitto switches
    to `mosquitto`) with only its port replaced and, so as not to touch the machine's own
    broker's file, `persistence_file` named for this test: a QoS 1 message for a
    disconnected persistent session survives a SIGTERM and a new start."""
    prefix = as_root()
    conf_text = MOSQUITTO_CONF.read_text()
    location = re.search(r"^persistence_location (\S+)$", conf_text, flags=re.M).group(1)
    assert "\nuser " not in conf_text and re.search(r"^persistence true$", conf_text, flags=re.M)
    port = free_port()
    store = f"chatroom-test-{uuid.uuid4().hex[:8]}.db"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(re.sub(r"^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1", conf_text, flags=re.M)
                    + f"\npersistence_file {store}\n")
    log = tmp_path / "mosquitto.log"
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    def start() -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(prefix + [binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        wait_listening(proc, port, "mosquitto", log)
        return proc

    topic, client_id = f"t{uuid.uuid4().hex[:8]}/kept", f"keeper-{uuid.uuid4().hex[:6]}"
    proc = start()
    try:
        persistent_subscriber(port, client_id, topic).stop()  # the session stays, with its subscription
        publisher = MqttProbe(port).start()
        publisher.publish(topic, "waited for you", qos=1)
        publisher.stop()
        assert stop_process(proc, signal.SIGTERM) == 0
        assert "Error saving" not in log.read_text(), log.read_text()
        proc = start()
        subscriber = persistent_subscriber(port, client_id, topic)
        try:
            assert subscriber.wait(topic)[0].payload == b"waited for you"
        finally:
            subscriber.stop()
    finally:
        stop_process(proc, signal.SIGTERM)
        subprocess.run(prefix + ["rm", "-f", os.path.join(location, store)], check=False)


# --- acl.example for a cluster -------------------------------------------------------------------------

CLUSTER_PASSWORDS = {"chatroom-bridge": "bridge-pw", "chatroom-bridge-2": "bridge2-pw",
                     "homeassistant": "ha-pw", "esp-a": "a-pw"}


class LoginBroker(Mosquitto):
    """mosquitto-devices.conf (port, persistence, password and ACL paths replaced)."""

    def __init__(self, workdir: Path, passwords: Path, acl: Path):
        super().__init__(workdir, anonymous=False)
        self.passwords, self.acl = passwords, acl

    def base_conf(self) -> str:
        return (shipped_conf(self.port, self.workdir, DEVICES_CONF)
                .replace("/etc/mosquitto/chatroom.passwd", str(self.passwords))
                .replace("/etc/mosquitto/chatroom.acl", str(self.acl)))


def cluster_acl() -> str:
    """acl.example with its commented-out second-instance block uncommented, as it says."""
    text = ACL_EXAMPLE.read_text()
    block = re.search(r"^#user chatroom-bridge-2\n(?:#topic .*\n)+", text, flags=re.M)
    assert block, "acl.example has no commented-out block for a second instance"
    return text.replace(block.group(0), re.sub(r"^#", "", block.group(0), flags=re.M))


def test_acl_example_lets_two_instances_log_in_and_home_assistant_read_each_ones_state(
        tmp_path, redis_server, server_for):
    """The devices conf and acl.example (its second-instance block uncommented): two
    instances with a login each relay a device's message through the shared subscription,
    and Home Assistant's login reads the connectivity topic discovery gives it for each
    instance (chatroom/bridge/<INSTANCE_ID>/state) as online."""
    passwords = password_file(tmp_path / "passwd", CLUSTER_PASSWORDS)
    acl = tmp_path / "acl"
    acl.write_text(cluster_acl())
    broker = LoginBroker(tmp_path / "broker", passwords, acl).start()
    servers = []
    try:
        home_assistant = MqttProbe(broker.port, ["homeassistant/#", "chatroom/bridge/+/state"],
                                   client_id="homeassistant")
        home_assistant.client.username_pw_set("homeassistant", CLUSTER_PASSWORDS["homeassistant"])
        home_assistant.start()
        group = f"g{uuid.uuid4().hex[:6]}"
        for index, login in enumerate(("chatroom-bridge", "chatroom-bridge-2")):
            env = app_env(broker, tmp_path, ASYNC_MODE="eventlet", MQTT_TOPIC_PREFIX="chatroom",
                          REDIS_URL=redis_server.url, MQTT_SHARED_GROUP=group, INSTANCE_ID=f"i{index}",
                          DATABASE_PATH=str(tmp_path / "shared.db"), MQTT_USERNAME=login,
                          MQTT_PASSWORD=CLUSTER_PASSWORDS[login], MQTT_DEVICE_TOPICS_ONLY="true")
            servers.append(server_for(env))

        configs = [received.json() for received in home_assistant.wait(
            "homeassistant/binary_sensor/chatroom_bridge_" + group + "/connectivity_i0/config")]
        configs += [received.json() for received in home_assistant.wait(
            "homeassistant/binary_sensor/chatroom_bridge_" + group + "/connectivity_i1/config")]
        state_topics = [config["state_topic"] for config in configs]
        assert state_topics == ["chatroom/bridge/i0/state", "chatroom/bridge/i1/state"]
        for topic in state_topics:
            home_assistant.wait(topic, match=lambda state: state.get("state") == "online")

        device = MqttProbe(broker.port, client_id="esp-a")
        device.client.username_pw_set("esp-a", CLUSTER_PASSWORDS["esp-a"])
        device.start()
        device.publish("chatroom/messages/in/esp-a", {"message": "through the cluster"})
        device.stop()
        wait_for(lambda: [m["content"] for m in requests.get(
            servers[1].url + "/api/messages", timeout=TIMEOUT).json()["messages"]] == ["through the cluster"],
            what="the device's message in the shared history")
        for server in servers:
            status = server.status()[1]["mqtt_status"]
            assert status["is_connected"] and status["reconnect_count"] == 0, status
        home_assistant.stop()
    finally:
        for server in servers:  # before the broker: they say goodbye to it
            server.stop()
        broker.kill()
