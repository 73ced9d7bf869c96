"""The history is the outbox (PROTOCOL 12): chat messages the broker never acknowledged
survive a restart of the server, and go out in seq order, once."""
import sqlite3

import requests
from command_device import Device
from conftest import RunningApp, app_env

from support import TIMEOUT, MqttProbe, wait_for


def cursor_of(database: str, scope: str, room: str = "lobby") -> int:
    """The durable cursor as the server wrote it (chatroom/storage/publish_cursor.py)."""
    with sqlite3.connect(database, timeout=TIMEOUT) as db:
        row = db.execute("SELECT seq FROM mqtt_publish_cursor WHERE scope = ? AND room = ?", (scope, room)).fetchone()
    return row[0] if row else 0


def post(url: str, text: str) -> dict:
    response = requests.post(f"{url}/api/messages", json={"username": "ops", "message": text}, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()["message"]


def test_messages_posted_while_the_broker_is_down_survive_a_killed_server(own_broker, tmp_path, server_for):
    """Broker stopped, 12 web messages posted, the server SIGKILLed and started again, the broker
    started: each of them on P/messages/out once, in seq order (counted after the stream settled)."""
    # eventlet, as deployed: the cursor's writes must never make a green thread wait for SQLite's lock.
    env = app_env(own_broker, tmp_path, MQTT_CLIENT_ID="bridge-restart", ASYNC_MODE="eventlet")
    prefix, database = env["MQTT_TOPIC_PREFIX"], env["DATABASE_PATH"]
    probe = MqttProbe(own_broker.port, f"{prefix}/messages/out", client_id="restart-watcher",
                      clean_session=False).start()
    try:
        server = server_for(env)
        before = post(server.url, "before")
        probe.wait(f"{prefix}/messages/out")
        # Acknowledged and written down: a crash from here on does not send it again.
        wait_for(lambda: cursor_of(database, prefix) == before["seq"], what="the cursor written")
        own_broker.stop()
        wait_for(lambda: server.status_code() == 503, what="the server noticed the outage")
        sent = [post(server.url, f"while down {i}") for i in range(12)]
        server.stop(sig=9)  # SIGKILL: the in-memory outbox is gone
        server = server_for(env, wait_connected=False)
        own_broker.start()
        wait_for(lambda: server.status_code() == 200, timeout=60, what="reconnected")
        probe.wait(f"{prefix}/messages/out", count=13, timeout=60)
        # Settled: the cursor reached the last one, so nothing more is on its way.
        wait_for(lambda: cursor_of(database, prefix) == sent[-1]["seq"], timeout=60, what="all acknowledged")
        outs = [r.json() for r in probe.on(f"{prefix}/messages/out")]
        assert [m["seq"] for m in outs] == [before["seq"]] + [m["seq"] for m in sent]
        assert [m["message_id"] for m in outs[1:]] == [m["message_id"] for m in sent]
        assert "history holds messages the broker never acknowledged in 1 rooms" in server.logs(whole=True)
        history = server.status()[1]["mqtt_status"]["history_outbox"]
        assert (history["replayed"], history["rooms_behind"], history["unacknowledged"]) == (12, 0, 0)
    finally:
        probe.stop()


def test_the_cursor_on_postgresql_starts_at_the_newest_message_and_only_moves_forward(postgres_url):
    """The same cursor beside a PostgreSQL history: created at the newest stored message (old
    history is not replayed), moved forward only, and it reads what was stored after it."""
    from chatroom.core.model import Message
    from chatroom.storage.postgres import PostgresStore
    from chatroom.storage.publish_cursor import open_publish_cursor

    store = PostgresStore(postgres_url)
    cursor = open_publish_cursor(postgres_url, "", store.path)
    try:
        for seq in (1, 2, 3):
            store.append(Message(username="u", content=f"m{seq}", room="pg", source="http", seq=seq))
        # (["pg"]: the session's database holds other tests' rooms too)
        assert cursor.load("p")["pg"] == 3
        store.append(Message(username="u", content="m4", room="pg", source="http", seq=4))
        assert cursor.newest_per_room()["pg"] == 4 and cursor.newest("pg") == 4
        assert [m.content for m in cursor.after("pg", 2, 10)] == ["m3", "m4"]
        # a command record (stored with a seq, published as a system event) is not the cursor's
        store.append(Message(username="ops", content="ops -> lamp: power = true", room="pg", source="http",
                             seq=5, type="system_message", data={"event": "command"}))
        assert cursor.newest_per_room()["pg"] == 4 and cursor.newest("pg") == 4
        assert [m.content for m in cursor.after("pg", 3, 10)] == ["m4"]
        cursor.save("p", {"pg": 4})
        cursor.save("p", {"pg": 2})  # an older acknowledgement never moves it back
        assert cursor.load("p")["pg"] == 4 and cursor.load("other")["pg"] == 4
    finally:
        cursor.close()
        store.close()


def test_the_cursor_on_postgresql_connects_again_after_its_connection_is_cut(postgres_url):
    """PostgreSQL ends the cursor's connection (a restart, a failover, an idle kill): its next
    calls open a new one and answer, as the history store next to it does."""
    import psycopg

    from chatroom.core.model import Message
    from chatroom.storage.postgres import PostgresStore
    from chatroom.storage.publish_cursor import open_publish_cursor

    store = PostgresStore(postgres_url)
    cursor = open_publish_cursor(postgres_url, "", store.path)
    admin = psycopg.connect(postgres_url, autocommit=True)
    try:
        store.append(Message(username="u", content="c1", room="cut", source="http", seq=1))
        assert cursor.load("cut")["cut"] == 1
        pid = cursor._db.info.backend_pid
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        wait_for(lambda: not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone(),
                 what="the cursor's backend gone")
        store.append(Message(username="u", content="c2", room="cut", source="http", seq=2))
        cursor.save("cut", {"cut": 2})  # the first call after the cut: connects again, no error
        assert cursor._db.info.backend_pid != pid
        assert cursor.newest("cut") == 2 and [m.content for m in cursor.after("cut", 0, 10)] == ["c1", "c2"]
        assert cursor.load("cut")["cut"] == 2
    finally:
        admin.close()
        cursor.close()
        store.close()


def test_command_records_are_not_replayed_as_chat_and_never_keep_a_room_behind(own_broker, tmp_path):
    """A command and its result are stored in history with a seq (type system_message) and
    published live on P/…/system, never on messages/out. The room's newest rows are those two
    records; after a clean restart messages/out carries no record and the room is not behind."""
    env = app_env(own_broker, tmp_path, MQTT_CLIENT_ID="bridge-records")
    prefix = env["MQTT_TOPIC_PREFIX"]
    probe = MqttProbe(own_broker.port, f"{prefix}/#").start()
    lamp = Device(own_broker.port, prefix, "lamp-1", {"power": {"type": "bool"}})
    app = RunningApp(env).start()
    try:
        assert app.http.post("/api/messages", json={"username": "ops", "message": "hello"}).status_code == 201
        lamp.join()
        wait_for(lambda: app.http.get("/api/devices/lamp-1/commands").get_json().get("commands"),
                 what="lamp's commands declared")
        answer = app.http.post("/api/devices/lamp-1/commands", json={"command": "power", "value": True,
                                                                     "username": "ops"})
        assert answer.status_code == 200 and answer.get_json()["ok"], answer.get_data(as_text=True)
        probe.wait(f"{prefix}/system", match=lambda body: body.get("event") == "command_result")
        stored = app.http.get("/api/messages").get_json()["messages"]
        assert [m["type"] for m in stored][-2:] == ["system_message", "system_message"]
        wait_for(lambda: app.status()["mqtt_status"]["history_outbox"]["unacknowledged"] == 0, what="acked")
        app.stop()
        app = RunningApp(env).start()
        assert app.status()["mqtt_status"]["history_outbox"]["rooms_behind"] == 0
        assert app.http.post("/api/messages", json={"username": "ops", "message": "after"}).status_code == 201
        # A live message enters only once its room caught up: the stream has settled with it.
        probe.wait(f"{prefix}/messages/out", match=lambda body: body["content"] == "after")
        outs = [hit.json() for hit in probe.on(f"{prefix}/messages/out")]
        assert [(m["type"], m["content"]) for m in outs] == [("user_message", "hello"), ("user_message", "after")]
        history = app.status()["mqtt_status"]["history_outbox"]
        assert (history["replayed"], history["rooms_behind"]) == (0, 0)
    finally:
        app.stop()
        lamp.stop()
        probe.stop()


def test_published_rooms_admit_each_seq_once_and_the_cursor_waits_for_the_oldest():
    """The bookkeeping behind the replay (mqtt_service/published.py), without a broker."""
    from mqtt_service.published import PublishedRooms

    rooms = PublishedRooms({"lobby": 2, "quiet": 5}, behind={"lobby"})
    # lobby is behind: live messages wait for the replay, which admits in its generation only
    assert not rooms.admit(("lobby", 3))
    assert rooms.replay_points() == [("lobby", 2, 0)]
    assert rooms.admit(("lobby", 3), generation=0) and rooms.admit(("lobby", 4), generation=0)
    assert not rooms.admit(("lobby", 4), generation=0)  # once
    assert not rooms.caught_up("lobby", 0, newest_stored=5)  # history holds more
    assert rooms.caught_up("lobby", 0, newest_stored=4) and rooms.admit(("lobby", 5))
    # acknowledgements out of order: the cursor moves only past acknowledged ones
    rooms.acknowledged(("lobby", 4))
    assert rooms.take_changes() == {}
    rooms.acknowledged(("lobby", 3))
    assert rooms.take_changes() == {"lobby": 4}
    # the outbox lets 5 go: lobby is behind again, a new generation, read from 4 on
    assert rooms.let_go(("lobby", 5)) and rooms.is_behind("lobby")
    assert rooms.replay_points() == [("lobby", 4, 1)]
    assert not rooms.admit(("lobby", 5), generation=0) and rooms.admit(("lobby", 5), generation=1)
    assert not rooms.let_go(("quiet", 6))  # never admitted: nothing to let go
    assert rooms.admit(("quiet", 6)) and not rooms.admit(("quiet", 6))
