"""Settings from the environment: defaults, parsing, one clear error per bad value."""
import os

import pytest

from chatroom.config import ConfigError, Settings


def test_defaults_match_the_contract():
    """An empty environment gives PROTOCOL's defaults."""
    s = Settings.from_env({})
    assert (s.host, s.port, s.async_mode, s.mqtt_broker, s.mqtt_port, s.mqtt_qos) == (
        "127.0.0.1", 5000, "eventlet", "localhost", 1883, 1)
    assert (s.mqtt_topic_prefix, s.history_limit, s.max_message_chars) == ("chatroom", 50, 2000)
    assert (s.rate_limit_count, s.rate_limit_seconds, s.mqtt_user_timeout) == (20, 10.0, 600)
    assert s.mqtt_client_id.startswith("chatroom-bridge-") and not s.assistant_enabled
    assert (s.mqtt_out_format, s.max_room_members, s.log_level) == ("full", 1000, "INFO")


def test_default_client_id_includes_the_port():
    """Two servers on one host (different PORTs) never share an MQTT session by default."""
    first, second = Settings.from_env({"PORT": "5000"}), Settings.from_env({"PORT": "5001"})
    assert first.mqtt_client_id.endswith("-5000") and second.mqtt_client_id.endswith("-5001")


@pytest.mark.parametrize("name, value", [("LOG_LEVEL", "loud"), ("MQTT_OUT_FORMAT", "tiny"),
                                         ("MAX_ROOM_MEMBERS", "0"), ("MQTT_TOPIC_PREFIX", "chat\nroom")])
def test_new_settings_refuse_bad_values(name, value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert info.value.problems[0].startswith(f"{name}:")


def test_secret_key_is_random_per_start_unless_given():
    """No hard-coded secret: two starts without SECRET_KEY differ; a given one is used."""
    assert Settings.from_env({}).secret_key != Settings.from_env({}).secret_key
    assert len(Settings.from_env({}).secret_key) >= 32
    assert Settings.from_env({"SECRET_KEY": "mine"}).secret_key == "mine"


def test_every_problem_is_reported_with_its_variable():
    """All bad values at once, each naming its variable and the value."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PORT": "abc", "MQTT_QOS": "3", "ASYNC_MODE": "gevent", "RATE_LIMIT": "x"})
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == ["PORT", "ASYNC_MODE", "MQTT_QOS", "RATE_LIMIT"] or \
        sorted(p.split(":")[0] for p in problems) == ["ASYNC_MODE", "MQTT_QOS", "PORT", "RATE_LIMIT"]
    assert "'abc'" in " ".join(problems)


def test_rate_limit_zero_disables():
    """RATE_LIMIT=0 turns limiting off."""
    assert not Settings.from_env({"RATE_LIMIT": "0"}).rate_limit_enabled
    assert Settings.from_env({"RATE_LIMIT": "5/2"}).rate_limit_count == 5


def test_redacted_hides_secrets():
    """Secrets never reach a log line through redacted()."""
    shown = Settings.from_env({"OPENAI_API_KEY": "sk-test", "MQTT_PASSWORD": "pw", "API_TOKEN": "t"}).redacted()
    assert shown["openai_api_key"] == shown["mqtt_password"] == shown["api_token"] == "***"


def test_several_instances_settings_are_read():
    """PROTOCOL 8: REDIS_URL + MQTT_SHARED_GROUP (+ DATABASE_URL) run several instances."""
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0", "MQTT_SHARED_GROUP": "relay",
                                  "DATABASE_URL": "postgresql://chat@db/chat", "INSTANCE_ID": "a-1"})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.mqtt_shared_group == "relay"
    assert settings.database_url == "postgresql://chat@db/chat"
    assert settings.instance_id == "a-1"
    assert settings.several_instances


def test_single_instance_is_the_default():
    settings = Settings.from_env({"PORT": "5123"})
    assert not settings.several_instances and settings.database_url == "" and settings.mqtt_shared_group == ""
    assert settings.instance_id.endswith("-5123")  # host-port: unique per server on a host


@pytest.mark.parametrize("env, problem", [
    # Half a multi-instance set-up duplicates or splits messages: refused, not run.
    ({"REDIS_URL": "redis://localhost"}, "MQTT_SHARED_GROUP: required with REDIS_URL"),
    ({"MQTT_SHARED_GROUP": "relay"}, "REDIS_URL: required with MQTT_SHARED_GROUP"),
    ({"REDIS_URL": "http://localhost", "MQTT_SHARED_GROUP": "relay"}, "REDIS_URL: must start with"),
    ({"REDIS_URL": "redis://x", "MQTT_SHARED_GROUP": "a/b"}, "MQTT_SHARED_GROUP: must be"),
    ({"REDIS_URL": "redis://x", "MQTT_SHARED_GROUP": "a+"}, "MQTT_SHARED_GROUP: must be"),
    ({"DATABASE_URL": "mysql://db/chat"}, "DATABASE_URL: must start with postgresql://"),
    ({"INSTANCE_ID": "a b"}, "INSTANCE_ID: must be"),
])
def test_several_instances_settings_are_checked(env, problem):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert any(line.startswith(problem) for line in info.value.problems), info.value.problems


def test_redis_without_mqtt_needs_no_group():
    """With MQTT off there are no inbound topics to share."""
    assert Settings.from_env({"REDIS_URL": "redis://x", "MQTT_ENABLE": "false"}).several_instances


def test_redacted_hides_passwords_in_urls():
    shown = Settings.from_env({"REDIS_URL": "redis://:pw@x", "MQTT_SHARED_GROUP": "g",
                               "DATABASE_URL": "postgresql://u:secret@db/chat"}).redacted()
    assert shown["redis_url"] == shown["database_url"] == "***"


def test_env_example_lists_every_variable_with_its_default():
    """.env.example names every variable Settings reads, with the same default."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    source = (root / "chatroom" / "config.py").read_text()
    example = (root / ".env.example").read_text()
    read = re.findall(r'reader\.get\("([A-Z_]+)", "([^"]*)"', source)
    assert len(read) >= 30
    listed = dict(re.findall(r"^#?\s*([A-Z_]+)=(.*)$", example, re.M))
    for name, default in read:
        assert name in listed, f"{name} missing from .env.example"
        assert listed[name] == default, f"{name}: .env.example says {listed[name]!r}, code says {default!r}"
    for name in ("REDIS_URL", "MQTT_SHARED_GROUP", "DATABASE_URL", "INSTANCE_ID", "LOG_LEVEL"):
        assert name in listed


def test_a_missing_ca_file_is_one_clear_problem(tmp_path):
    """A wrong MQTT_CA_CERTS path stops start-up with one line, not a traceback at connect time."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MQTT_TLS": "true", "MQTT_CA_CERTS": str(tmp_path / "nope.pem")})
    assert info.value.problems == [f"MQTT_CA_CERTS: no readable file at {str(tmp_path / 'nope.pem')!r}"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict:
    """Two self-signed certificates and keys made with openssl, an encrypted copy of one key,
    and a file that is not PEM."""
    import subprocess

    directory = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)
    for name in ("a", "b"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}")
    openssl("pkey", "-in", "a.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key")
    (directory / "not-pem.txt").write_text("not a certificate\n")
    return {"a_crt": str(directory / "a.crt"), "a_key": str(directory / "a.key"), "b_key": str(directory / "b.key"),
            "encrypted": str(directory / "encrypted.key"), "not_pem": str(directory / "not-pem.txt")}


@pytest.mark.parametrize("files, problem", [
    ({"MQTT_CA_CERTS": "not_pem"}, "MQTT_CA_CERTS: no PEM CA certificate could be read from {not_pem!r}"),
    ({"MQTT_CERTFILE": "a_crt", "MQTT_KEYFILE": "b_key"},
     "MQTT_KEYFILE: the key in {b_key!r} does not belong to the certificate in {a_crt!r}"),
    ({"MQTT_CERTFILE": "a_crt", "MQTT_KEYFILE": "encrypted"},
     "MQTT_KEYFILE: the private key in {encrypted!r} is encrypted; a passphrase is not supported"),
    ({"MQTT_CERTFILE": "a_crt", "MQTT_KEYFILE": "not_pem"},
     "MQTT_KEYFILE: no PEM private key could be read from {not_pem!r}"),
    ({"MQTT_CERTFILE": "not_pem", "MQTT_KEYFILE": "a_key"},
     "MQTT_CERTFILE: no PEM certificate could be read from {not_pem!r}"),
    ({"MQTT_CERTFILE": "a_crt"}, "MQTT_KEYFILE: required: no private key in MQTT_CERTFILE {a_crt!r}"),
])
def test_tls_files_that_exist_but_cannot_be_used_are_one_line_each(tls_files, files, problem):
    """Issue 26: a key of another certificate, an encrypted key (refused, never prompted for),
    or a file that is not PEM crashed the bridge's start with an SSLError: each is one line."""
    env = {"MQTT_TLS": "true", **{name: tls_files[file] for name, file in files.items()}}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(problem.format(**tls_files)), info.value.problems
    good = {"MQTT_TLS": "true", "MQTT_CA_CERTS": tls_files["a_crt"], "MQTT_CERTFILE": tls_files["a_crt"],
            "MQTT_KEYFILE": tls_files["a_key"]}
    assert Settings.from_env(good).mqtt_keyfile == tls_files["a_key"]


def test_a_key_of_another_certificate_stops_the_server_with_exit_2(tls_files, monkeypatch, caplog):
    """app.py's main(): one configuration-error line and exit code 2, before anything starts."""
    import logging

    import app as server

    monkeypatch.setattr(server, "load_dotenv", lambda *args, **kwargs: None)
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)  # main() may set it
    for name, value in {"MQTT_TLS": "true", "MQTT_CERTFILE": tls_files["a_crt"],
                        "MQTT_KEYFILE": tls_files["b_key"]}.items():
        monkeypatch.setenv(name, value)
    assert server.main() == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"configuration error: MQTT_KEYFILE: the key in {tls_files['b_key']!r} does not belong "
                      f"to the certificate in {tls_files['a_crt']!r}"]


def test_relative_paths_are_taken_from_the_project_directory(tmp_path, tls_files):
    """Issue 22: `.env` is read beside app.py, so its relative paths mean the same place:
    run from `/`, DATABASE_PATH=data/chat.db must not become /data/chat.db."""
    from chatroom.config import PROJECT_DIR

    assert Settings.from_env({}).database_path == str(PROJECT_DIR / "data" / "chat.db")
    assert Settings.from_env({"DATABASE_PATH": "data/other.db"}).database_path == str(PROJECT_DIR / "data/other.db")
    assert Settings.from_env({"DATABASE_PATH": str(tmp_path / "a.db")}).database_path == str(tmp_path / "a.db")
    ca = tmp_path / "ca.pem"
    ca.write_text(open(tls_files["a_crt"]).read())  # a real certificate: the file is loaded
    relative_ca = os.path.relpath(ca, PROJECT_DIR)
    assert Settings.from_env({"MQTT_TLS": "true", "MQTT_CA_CERTS": relative_ca}).mqtt_ca_certs == str(
        PROJECT_DIR / relative_ca)


def test_a_server_started_from_elsewhere_keeps_its_history_in_the_project(tmp_path):
    """`python /path/to/app.py` from another directory (as a service manager might)."""
    import subprocess
    import sys
    import uuid

    from chatroom.config import PROJECT_DIR
    from support import free_port, wait_for

    name = f"data/from-elsewhere-{uuid.uuid4().hex[:8]}.db"
    port = free_port()
    env = {**os.environ, "DATABASE_PATH": name, "PORT": str(port), "MQTT_ENABLE": "false", "ASYNC_MODE": "threading"}
    proc = subprocess.Popen([sys.executable, str(PROJECT_DIR / "app.py")], cwd=str(tmp_path), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (PROJECT_DIR / name).exists() or proc.poll() is not None, what="the history file")
        assert (PROJECT_DIR / name).exists() and not (tmp_path / name).exists()
    finally:
        proc.terminate()
        proc.wait(15)
        for suffix in ("", "-wal", "-shm"):
            (PROJECT_DIR / f"{name}{suffix}").unlink(missing_ok=True)


def test_an_unreadable_env_file_is_one_line_and_exit_2(monkeypatch, caplog):
    """Issue 22: a .env the service user cannot read was a PermissionError traceback. (The tests
    run as root, who reads any file: python-dotenv's own error is raised in its place.)"""
    import logging

    import app as server

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", server.ENV_FILE)
    monkeypatch.setattr(server, "load_dotenv", unreadable)
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)  # main() may set it
    assert server.main() == 2
    assert any("cannot read" in r.getMessage() and "Permission denied" in r.getMessage() for r in caplog.records)
