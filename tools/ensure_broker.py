"""`python -m tools.ensure_broker`: make sure `make run` has a broker.

If MQTT_BROKER:MQTT_PORT answers, nothing to do. If it is this machine and no
broker answers, install mosquitto with apt where we can (root or passwordless
sudo) and start it with the shipped config; otherwise say exactly what to run.
A remote broker that does not answer is only a warning: the server starts
anyway, serves the web chat and keeps retrying.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dotenv import load_dotenv

from chatroom.config import ConfigError, Settings

log = logging.getLogger("ensure_broker")
ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONF = ROOT / "clients" / "mosquitto" / "mosquitto.conf"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_reachable(host: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if reachable(host, port):
            return True
        time.sleep(0.2)  # a CLI helper polling a port, not a test
    return False


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (path for path in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(path)), None)


def privileged_prefix() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def install_mosquitto() -> bool:
    prefix = privileged_prefix()
    if not shutil.which("apt-get") or prefix is None:
        log.error("mosquitto is not installed. Run: sudo apt-get install -y mosquitto mosquitto-clients "
                  "(or point MQTT_BROKER/MQTT_PORT at a running broker in .env)")
        return False
    log.info("installing mosquitto with apt-get…")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "mosquitto", "mosquitto-clients"]):
        if subprocess.run(prefix + command, env=env).returncode != 0:
            log.error("'%s' failed; install mosquitto by hand and run make run again", " ".join(command))
            return False
    return True


def shipped_conf(port: int, directory: Path, conf: Path = SHIPPED_CONF) -> str:
    """clients/mosquitto/mosquitto.conf (or another shipped `conf`, such as
    mosquitto-devices.conf), listening on 127.0.0.1:`port`, persisting in `directory`."""
    text = re.sub(r"^listener 1883\b.*$", f"listener {port} 127.0.0.1", conf.read_text(), count=1, flags=re.M)
    return re.sub(r"^persistence_location .*$", f"persistence_location {directory}/", text, flags=re.M)


def start_mosquitto(port: int) -> int | None:
    """Start mosquitto in the background with the shipped config on `port`; its PID."""
    conf_dir = Path(tempfile.gettempdir()) / "chatroom-mosquitto"
    conf_dir.mkdir(exist_ok=True)
    conf = conf_dir / f"mosquitto-{port}.conf"
    conf.write_text(
        shipped_conf(port, conf_dir)
        + f"pid_file {conf_dir}/mosquitto-{port}.pid\n"  # so it can be stopped by PID
        + ("user root\n" if os.geteuid() == 0 else "")  # as root it would switch to a user who can't write here
    )
    log.info("starting mosquitto on 127.0.0.1:%s (config %s)", port, conf)
    pid_file = conf_dir / f"mosquitto-{port}.pid"
    pid_file.unlink(missing_ok=True)
    result = subprocess.run([mosquitto_binary(), "-d", "-c", str(conf)], capture_output=True, text=True)
    if result.returncode != 0:
        log.error("mosquitto did not start: %s", result.stderr.strip() or result.stdout.strip())
        return None
    if not wait_reachable("127.0.0.1", port, 10) or not pid_file.exists():
        return None
    return int(pid_file.read_text().strip())


def ensure(settings: Settings) -> tuple[int, int | None]:
    """(exit status, PID of a mosquitto started here or None)."""
    host, port = settings.mqtt_broker, settings.mqtt_port
    if not settings.mqtt_enable:
        log.info("MQTT_ENABLE=false: no broker needed")
        return 0, None
    if reachable(host, port):
        log.info("MQTT broker reachable at %s:%s", host, port)
        return 0, None
    if host not in LOCAL_HOSTS:
        log.warning("MQTT broker %s:%s does not answer; the server starts anyway and keeps retrying", host, port)
        return 0, None
    if mosquitto_binary() is None and not install_mosquitto():
        return 1, None
    pid = start_mosquitto(port)
    if pid is not None:
        log.info("MQTT broker running at %s:%s (mosquitto pid %s; stop it with: kill %s)", host, port, pid, pid)
        return 0, pid
    log.error("no broker at %s:%s. Start one (mosquitto -c %s) or set MQTT_BROKER/MQTT_PORT in .env",
              host, port, SHIPPED_CONF)
    return 1, None


def load_settings() -> Settings:
    load_dotenv(ROOT / ".env", override=False)
    return Settings.from_env(os.environ)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = load_settings()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    return ensure(settings)[0]


if __name__ == "__main__":
    sys.exit(main())
