"""The shipped clients, each run as a real process against the server and a real mosquitto."""
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from arduino_build import build_sketch
from conftest import RunningApp, app_env
from devices import DeviceProcess

from support import ROOT, TIMEOUT, Mosquitto, MqttProbe, stop_process, wait_for

CLIENTS = ROOT / "clients"
SCRIPTS = CLIENTS / "mosquitto"


class LineReader:
    """Collects a process's stdout lines on a thread, so tests can wait for one."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, fragment: str) -> str:
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no line with {fragment!r}; saw {self.seen}") from None
            self.seen.append(line)
            if fragment in line:
                return line


def python_client(app, *args, **kwargs) -> subprocess.Popen:
    command = [sys.executable, str(CLIENTS / "python_client.py"), "--broker", "127.0.0.1",
               "--port", str(app.settings.mqtt_port), "--prefix", app.prefix, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def node_client(app, *args, **kwargs) -> subprocess.Popen:
    command = ["node", str(CLIENTS / "nodejs_client.js"), "--broker", "127.0.0.1",
               "--port", str(app.settings.mqtt_port), "--prefix", app.prefix, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="session")
def node_modules():
    """`npm ci` once for the Node.js client (the registry is reachable; node 18+ needed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: the Node.js client cannot be tested here")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CLIENTS, check=True,
                   timeout=300)
    return CLIENTS / "node_modules"


@pytest.fixture(params=["python", "node"])
def cli(request):
    """(kind, start) for the Python and the Node.js client, which take the same flags."""
    if request.param == "node":
        request.getfixturevalue("node_modules")
    return request.param, (python_client if request.param == "python" else node_client)


def web_and_probe(app, probe_for):
    web = app.socket()
    assert web.emit("join", {"username": "Watcher"}, callback=True)["ok"]
    return web, probe_for(app.prefix)


def web_messages(app, web):
    app.drain()
    return [p["args"][0] for p in web.get_received() if p["name"] == "chat_message"]


def inbound_topics(probe, prefix):
    """The inbound topics (shared or device, PROTOCOL 10) a probe on `<prefix>/#` saw, in order, once each."""
    kinds = ("/messages/in", "/users/join", "/users/leave")
    seen = [r.topic for r in probe.received if any(kind in r.topic for kind in kinds)]
    return list(dict.fromkeys(seen))


def test_send_once_joins_sends_leaves_and_exits_0(cli, make_app, probe_for):
    """`--send TEXT`: join, one message (seen by MQTT and the web), leave, exit 0; all three on the
    client's own device topics (PROTOCOL 10), with the same client_id in the payloads."""
    kind, start = cli
    app = make_app()
    web, probe = web_and_probe(app, probe_for)
    proc = start(app, "--name", f"{kind} script", "--client-id", f"{kind}-1", "--send", "backup done ✓")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    message = probe.wait(f"{app.prefix}/messages/out")[0].json()
    assert (message["username"], message["content"], message["client_id"]) == (
        f"{kind} script", "backup done ✓", f"{kind}-1")
    mine = lambda e: e["username"] == f"{kind} script"
    events = [e.json()["event"] for e in probe.wait(f"{app.prefix}/system", count=2, match=mine)]
    assert events == ["join", "leave"]
    assert [m["content"] for m in web_messages(app, web)] == ["backup done ✓"]
    assert inbound_topics(probe, app.prefix) == [f"{app.prefix}/{kind}/{kind_id}" for kind, kind_id in (
        ("users/join", f"{kind}-1"), ("messages/in", f"{kind}-1"), ("users/leave", f"{kind}-1"))]
    assert all(r.json()["client_id"] == f"{kind}-1" for r in probe.received if "/in/" in r.topic)


def test_shared_topics_flag_publishes_on_the_shared_topics(cli, make_app, probe_for):
    """`--shared-topics` (servers older than device topics): join, message, leave and the will on
    messages/in, users/join, users/leave with the client_id in the payload; in another room too."""
    kind, start = cli
    app = make_app()
    probe = probe_for(app.prefix)
    proc = start(app, "--name", f"{kind} old", "--client-id", f"{kind}-old", "--room", "attic", "--shared-topics",
                 "--send", "on the shared topics")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    message = probe.wait(f"{app.prefix}/attic/messages/out")[0].json()
    assert (message["client_id"], message["content"]) == (f"{kind}-old", "on the shared topics")
    probe.wait(f"{app.prefix}/attic/system", match=lambda e: e["event"] == "leave")
    assert inbound_topics(probe, app.prefix) == [f"{app.prefix}/attic/users/join", f"{app.prefix}/attic/messages/in",
                                                 f"{app.prefix}/attic/users/leave"]
    assert all(r.json()["client_id"] == f"{kind}-old" for r in probe.received if r.topic.endswith("/in"))


def test_a_client_id_that_cannot_be_a_topic_level_is_refused(cli, make_app, probe_for):
    """On the device topics the client_id is a topic level: '/', '+' or '#' in it is refused with a
    clear message and exit 2, before connecting. On the shared topics it is only a payload field."""
    kind, start = cli
    app = make_app()
    probe = probe_for(app.prefix)
    for bad in ("kitchen/oven", "esp+1", "esp#1"):
        proc = start(app, "--client-id", bad, "--send", "hello")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and "cannot be a topic level" in err and "--shared-topics" in err, err
    proc = start(app, "--client-id", "kitchen/oven", "--shared-topics", "--send", "hello")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert probe.wait(f"{app.prefix}/messages/out")[0].json()["client_id"] == "kitchen/oven"
    assert [r.topic for r in probe.received if "/in" in r.topic] == [f"{app.prefix}/messages/in"]


def test_listen_prints_room_messages_until_stopped(cli, make_app):
    """`--listen` prints `[HH:MM:SS] user: text`, with an escape sequence or a bidi override from
    the room printed as text (never sent to the terminal); SIGINT leaves and exits 0."""
    kind, start = cli
    app = make_app()
    proc = start(app, "--name", "listener", "--client-id", f"{kind}-listener", "--listen")
    try:
        reader = LineReader(proc)
        reader.wait_for("* listener joined")
        app.http.post("/api/messages", json={"username": "cron", "message": "hello listeners"})
        line = reader.wait_for("hello listeners")
        assert line.endswith("] cron: hello listeners") and line[0] == "[" and line[9] == "]"
        app.http.post("/api/messages", json={"username": "mallory", "message": "\x1b[2J\x1b]0;owned\x07 \u202egnp.exe"})
        line = reader.wait_for("mallory")
        assert "\x1b" not in line and "\x07" not in line and "\u202e" not in line
        assert "\\x1b[2J\\x1b]0;owned\\x07 \\u202egnp.exe" in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
        wait_for(lambda: app.http.get("/api/users").get_json()["users"] == [], what="listener left")
    finally:
        stop_process(proc)


def test_send_exits_non_zero_when_the_server_rejects_it(cli, make_app):
    """A rejected message (here: too long) is an error for our client_id: exit 1, reason on stderr."""
    kind, start = cli
    app = make_app(MAX_MESSAGE_CHARS="10")
    proc = start(app, "--name", "wordy", "--client-id", f"{kind}-wordy", "--send", "far more than ten characters")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "rejected (too_long)" in err


def test_send_exits_3_when_no_server_confirms(cli, broker):
    """Nobody bridges this prefix: the client says so instead of claiming success."""
    kind, _ = cli
    argv = ([sys.executable, str(CLIENTS / "python_client.py")] if kind == "python"
            else ["node", str(CLIENTS / "nodejs_client.js")])
    proc = subprocess.run(argv + ["--broker", "127.0.0.1", "--port", str(broker.port), "--prefix", "nobody-here",
                                  "--send", "hello?"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "no confirmation" in proc.stderr


def test_a_listening_client_with_heartbeats_stays_present(make_app, probe_for):
    """MQTT_USER_TIMEOUT=5: a client that only listens, re-joining every second (on its device
    topic), is never timed out, and its heartbeats make no system events."""
    app = make_app(MQTT_USER_TIMEOUT="5")
    probe = probe_for(app.prefix)
    proc = python_client(app, "--name", "quiet", "--client-id", "quiet-1", "--listen", "--heartbeat", "1")
    try:
        LineReader(proc).wait_for("* quiet joined")
        # Three timeouts' worth of heartbeats, counted on the broker, not by the clock.
        heartbeats = MqttProbe(app.settings.mqtt_port, f"{app.prefix}/users/join/quiet-1").start()
        heartbeats.wait(f"{app.prefix}/users/join/quiet-1", count=11, timeout=60)
        heartbeats.stop()
        app.components.device_timeout.expire()
        assert [u["username"] for u in app.http.get("/api/users").get_json()["users"]] == ["quiet"]
        assert [e.json()["event"] for e in probe.on(f"{app.prefix}/system")] == ["join"]
    finally:
        stop_process(proc)


def test_python_interactive_sends_each_line(make_app, probe_for):
    """With neither --send nor --listen, typed lines are sent; end of input leaves."""
    app = make_app()
    probe = probe_for(app.prefix)
    proc = python_client(app, "--name", "typist", stdin=subprocess.PIPE)
    proc.communicate("first line\n\nsecond line\n", timeout=60)
    assert proc.returncode == 0
    outs = probe.wait(f"{app.prefix}/messages/out", count=2)
    assert [o.json()["content"] for o in outs] == ["first line", "second line"]


@pytest.mark.parametrize("kind", ["python", "node"])
def test_client_help_lists_the_flags(kind, request):
    """`--help` names every flag the contract lists, the login and --shared-topics flags, and those for
    commands and requests (tests/test_client_commands.py)."""
    if kind == "node":
        request.getfixturevalue("node_modules")
    argv = ([sys.executable, str(CLIENTS / "python_client.py")] if kind == "python"
            else ["node", str(CLIENTS / "nodejs_client.js")])
    result = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--broker", "--port", "--name", "--client-id", "--room", "--send", "--listen", "--heartbeat",
                 "--username", "--password", "--shared-topics", "MQTT_USERNAME", "MQTT_PASSWORD",
                 "--on-command", "--commands", "--command", "--history-since", "--server", "--token", "--timeout",
                 "API_TOKEN"):
        assert flag in result.stdout, flag


def test_python_client_sets_a_will_that_leaves_when_killed(make_app, probe_for):
    """SIGKILL the Python client: its LWT, on its device topic users/leave/<client_id>, makes it leave."""
    app = make_app()
    probe = probe_for(app.prefix)
    proc = python_client(app, "--name", "fragile", "--client-id", "fragile-1", "--listen")
    try:
        LineReader(proc).wait_for("* fragile joined")
        stop_process(proc, signal.SIGKILL)
        leave = probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "leave")[0].json()
        assert leave["username"] == "fragile"
        assert probe.on(f"{app.prefix}/users/leave/fragile-1")[0].json() == {"client_id": "fragile-1"}
    finally:
        stop_process(proc)


# --- mosquitto scripts ------------------------------------------------------------------------

def script_env(app, **extra):
    return {**os.environ, "BROKER": "127.0.0.1", "PORT": str(app.settings.mqtt_port), "PREFIX": app.prefix,
            **extra}


def test_send_sh_posts_one_message(make_app, probe_for):
    """send.sh TEXT NAME CLIENT_ID: one message with a JSON-escaped text, then a leave, on its
    device topics."""
    app = make_app()
    probe = probe_for(app.prefix)
    text = 'quotes " and \\ backslash — ok\nsecond line'
    subprocess.run([str(SCRIPTS / "send.sh"), text, "shell", "sh-1"], env=script_env(app), check=True, timeout=60)
    out = probe.wait(f"{app.prefix}/messages/out")[0].json()
    assert (out["username"], out["content"], out["client_id"]) == ("shell", text, "sh-1")
    # It leaves right after: no member holds "shell", so the README's curl may use the name.
    probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "leave" and e["username"] == "shell")
    assert app.http.get("/api/users").get_json()["users"] == []
    assert app.http.post("/api/messages", json={"username": "shell", "message": "from curl"}).status_code == 201
    assert inbound_topics(probe, app.prefix) == [f"{app.prefix}/messages/in/sh-1", f"{app.prefix}/users/leave/sh-1"]


def test_send_sh_with_shared_topics_and_a_bad_client_id(make_app, probe_for):
    """SHARED_TOPICS=1: send.sh publishes on messages/in and users/leave (servers older than device
    topics). On the device topics a client_id with '/' is refused (exit 2) before publishing."""
    app = make_app()
    probe = probe_for(app.prefix)
    bad = subprocess.run([str(SCRIPTS / "send.sh"), "x", "shell", "a/b"], env=script_env(app), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "cannot be a topic level" in bad.stderr and "SHARED_TOPICS=1" in bad.stderr
    subprocess.run([str(SCRIPTS / "send.sh"), "old style", "shell", "sh-old"], env=script_env(app, SHARED_TOPICS="1"),
                   check=True, timeout=60)
    out = probe.wait(f"{app.prefix}/messages/out")[0].json()
    assert (out["client_id"], out["content"]) == ("sh-old", "old style")
    probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "leave")
    assert inbound_topics(probe, app.prefix) == [f"{app.prefix}/messages/in", f"{app.prefix}/users/leave"]


def test_sensor_sh_sends_readings_and_leaves(make_app, probe_for):
    """sensor.sh with COUNT=2: join, two readings with data, leave, on its device topics."""
    app = make_app()
    probe = probe_for(app.prefix)
    subprocess.run([str(SCRIPTS / "sensor.sh"), "fake-1", "Fake sensor"],
                   env=script_env(app, COUNT="2", INTERVAL="0"), check=True, timeout=60)
    outs = probe.wait(f"{app.prefix}/messages/out", count=2)
    for out in outs:
        data = out.json()["data"]
        assert set(data) == {"temperature", "humidity"} and 20 <= data["temperature"] <= 26
    probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "leave")
    readings = app.http.get("/api/readings?client_id=fake-1&key=humidity").get_json()["readings"]
    assert len(readings) == 2
    assert inbound_topics(probe, app.prefix) == [f"{app.prefix}/{kind}/fake-1"
                                                 for kind in ("users/join", "messages/in", "users/leave")]


def test_listen_sh_prints_the_room(make_app):
    """listen.sh prints `[HH:MM:SS] user: text` and system lines."""
    app = make_app()
    proc = subprocess.Popen([str(SCRIPTS / "listen.sh")], env=script_env(app), stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        reader = LineReader(proc)
        # mosquitto_sub may not be subscribed yet: post until the first line shows up.
        wait_for(lambda: (app.http.post("/api/messages", json={"username": "cron", "message": "ping"}),
                          not reader.lines.empty())[1], what="listen.sh output", interval=0.3)
        line = reader.wait_for("cron: ping")
        assert line.startswith("[") and line.endswith("] cron: ping")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the pipeline: mosquitto_sub and python3
        proc.wait(TIMEOUT)


def test_shipped_mosquitto_conf_runs_a_working_broker(tmp_path):
    """clients/mosquitto/mosquitto.conf starts a broker the relay works with."""
    broker = Mosquitto(tmp_path / "shipped", shipped=True)
    broker.start()
    try:
        app = RunningApp(app_env(broker, tmp_path)).start()
        try:
            with MqttProbe(broker.port, f"{app.prefix}/messages/out") as probe:
                probe.publish(f"{app.prefix}/messages/in", {"client_id": "c", "message": "shipped conf"})
                assert probe.wait(f"{app.prefix}/messages/out")[0].json()["content"] == "shipped conf"
                # message_size_limit: a 100 KB publication never reaches the relay, which keeps working.
                probe.publish(f"{app.prefix}/messages/in", b"x" * 100_000)
                probe.publish(f"{app.prefix}/messages/in", {"client_id": "c", "message": "after the big one"})
                outs = probe.wait(f"{app.prefix}/messages/out", count=2)
                assert outs[1].json()["content"] == "after the big one"
                assert app.status()["mqtt_status"]["messages_received"] == 2
        finally:
            app.stop()
    finally:
        broker.kill()


def test_acl_example_is_valid_for_mosquitto():
    """The ACL example names only the default prefix's topics and the bridge user; devices write
    their own device topics (tests/test_broker_identity.py runs it in a real mosquitto)."""
    text = (SCRIPTS / "acl.example").read_text()
    assert "user chatroom-bridge" in text and "topic readwrite chatroom/#" in text
    assert json.dumps("pattern write chatroom/messages/in/%u")[1:-1] in text


# --- the ESP32 sketch (tests/test_devices.py runs it in its default mode, on its device topics) -----

def test_esp32_sketch_with_shared_topics_publishes_on_the_shared_topics(own_broker, tmp_path, make_app):
    """Built with SHARED_TOPICS=1 (g++, the real PubSubClient), the sketch joins, reports and sets its
    will on the shared topics with its client_id in the payloads, for servers older than device topics."""
    sketch = build_sketch(CLIENTS / "esp32_sensor" / "esp32_sensor.ino", tmp_path / "sketch",
                          {"SENSOR_DHT22": "0", "SHARED_TOPICS": "1"}, werror=True)
    app = make_app(MQTT_PORT=own_broker.port, MQTT_TOPIC_PREFIX="chatroom")  # the sketch's prefix
    with MqttProbe(own_broker.port, "chatroom/#") as probe:
        device = DeviceProcess([str(sketch), "120"], {**os.environ, "HOST_MQTT_HOST": "127.0.0.1",
                                                      "HOST_MQTT_PORT": str(own_broker.port), "HOST_TIME_SCALE": "30"})
        try:
            device.wait_line(lambda line: line.startswith("sent: "), count=2)
            probe.wait("chatroom/messages/out", count=2)
        finally:
            device.stop()  # no DISCONNECT: the broker sends the will
        probe.wait("chatroom/system", match=lambda e: e["event"] == "leave")
        assert inbound_topics(probe, "chatroom") == ["chatroom/users/join", "chatroom/messages/in",
                                                     "chatroom/users/leave"]
        assert all(r.json()["client_id"] == "esp32-aabbcc" for r in probe.received if r.topic.endswith("/in"))
        assert probe.on("chatroom/errors") == []
    assert len(app.http.get("/api/readings?client_id=esp32-aabbcc&key=rssi").get_json()["readings"]) >= 2
