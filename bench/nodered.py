"""Node-RED beside us (BENCH_NODERED=1): the peer to beat, on the same broker and harness.

Installs node-red (pinned) with npm into the benchmark's temp dir, and runs the flow
of ../shared/bench/nodered/ (mqtt in → function → mqtt out, the same transform)
with its broker port and topic prefix pointed at the benchmark's.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

NODE_RED = "node-red@4.1.8"
FLOW_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "bench" / "nodered"


def install(workdir: Path) -> Path:
    """node-red's red.js, installed under `workdir` (npm; fails loudly without it)."""
    if shutil.which("npm") is None:
        raise SystemExit("BENCH_NODERED=1 needs npm (apt-get install nodejs npm)")
    target = workdir / "node-red"
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(target), NODE_RED],
                   check=True)
    return target / "node_modules" / "node-red" / "red.js"


def start(red_js: Path, broker_port: int, prefix: str, workdir: Path, ui_port: int) -> subprocess.Popen:
    """The shared flow, its broker and topics rewritten for this run."""
    user_dir = workdir / f"nodered-{prefix}"
    user_dir.mkdir()
    flows = json.loads((FLOW_DIR / "flows.json").read_text())
    for node in flows:
        if node.get("type") == "mqtt-broker":
            node["port"] = str(broker_port)
        if "topic" in node:
            node["topic"] = node["topic"].replace("chatroom/", f"{prefix}/", 1)
    (user_dir / "flows.json").write_text(json.dumps(flows))
    shutil.copy(FLOW_DIR / "settings.js", user_dir / "settings.js")
    log = open(user_dir / "node-red.log", "wb")
    return subprocess.Popen(["node", str(red_js), "--settings", str(user_dir / "settings.js"),
                             "--userDir", str(user_dir), "--port", str(ui_port)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(user_dir))
