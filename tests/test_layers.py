"""The layers of docs/ARCHITECTURE.md, enforced: who may import whom.

Every import statement of the product code is read (at module level and inside
functions alike, so a lazy import cannot sneak a dependency in) and checked against
the rules below. Fast: no module is executed.
"""
import ast
from pathlib import Path

from support import ROOT

FRAMEWORKS = ("flask", "flask_socketio", "socketio", "engineio", "werkzeug", "eventlet", "paho", "redis",
              "psycopg", "openai", "prometheus_client", "dotenv")
WEB_LIBRARIES = ("flask", "flask_socketio", "socketio", "engineio", "werkzeug")

# (package, what it must not import, why)
RULES = [
    ("chatroom.core", FRAMEWORKS + ("chatroom.config", "chatroom.topology", "chatroom.storage", "chatroom.web",
                                    "chatroom.assistant", "chatroom.ops", "mqtt_service"),
     "the room and the intake know no transport, framework, storage engine or settings"),
    ("chatroom.storage", WEB_LIBRARIES + ("paho", "openai", "chatroom.web", "chatroom.assistant", "chatroom.ops",
                                          "mqtt_service"),
     "storage implements core's ports and knows nothing above them"),
    ("chatroom.web", ("paho", "mqtt_service", "chatroom.assistant", "chatroom.storage"),
     "the web side sees the bridge, the assistant and the stores only through what app.py hands it"),
    ("chatroom.assistant", WEB_LIBRARIES + ("paho", "mqtt_service", "chatroom.web", "chatroom.storage"),
     "the assistant is a room listener: it talks to the room, not to a transport"),
    ("chatroom.ops", ("paho", "mqtt_service", "chatroom.web.routes", "chatroom.web.socketio_events"),
     "housekeeping and metrics read the room, not the transports"),
    ("chatroom", ("mqtt_service",), "the MQTT side depends on the room, never the reverse"),
    ("mqtt_service", WEB_LIBRARIES + ("chatroom.web", "chatroom.assistant", "chatroom.storage"),
     "the bridge is a transport beside the web side: neither imports the other"),
]


def product_modules() -> dict[str, Path]:
    modules = {}
    for package in ("chatroom", "mqtt_service"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of every module `name` imports (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from chatroom import web`
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            # importlib.import_module("paho.mqtt") and __import__("redis") import too.
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(modules: dict[str, Path]) -> list[str]:
    found = []
    for name, path in sorted(modules.items()):
        imported = imports_of(name, path)
        for package, forbidden, why in RULES:
            if not under(name, package):
                continue
            for module in sorted(imported):
                if any(under(module, banned) for banned in forbidden) and not under(module, package):
                    found.append(f"{name} imports {module}: {why}")
    return found


def test_every_module_keeps_to_its_layer():
    modules = product_modules()
    assert len(modules) > 40, "the product's modules were not found"
    assert violations(modules) == []


def test_the_rules_see_lazy_and_relative_imports(tmp_path):
    """The check itself bites: a function-level import of Flask in the core and a relative
    import of the bridge from the room are both caught."""
    (tmp_path / "chatroom" / "core").mkdir(parents=True)
    lazy = tmp_path / "chatroom" / "core" / "lazy.py"
    lazy.write_text("def f():\n    from flask import request\n    return request\n"
                    "def g():\n    import importlib\n    return importlib.import_module('paho.mqtt.client')\n")
    relative = tmp_path / "chatroom" / "sneaky.py"
    relative.write_text("from ..mqtt_service import bridge\n")
    found = violations({"chatroom.core.lazy": lazy, "chatroom.sneaky": relative})
    assert any("chatroom.core.lazy imports flask" in line for line in found), found
    assert any("chatroom.core.lazy imports paho.mqtt.client" in line for line in found), found
    assert any("chatroom.sneaky imports mqtt_service" in line for line in found), found


def test_only_the_settings_read_the_environment():
    """One source of configuration: Settings (chatroom/config.py), loaded by app.py. Any use
    of os.environ / os.getenv / os.putenv, however imported, counts."""
    readers = []
    for name, path in product_modules().items():
        if name == "chatroom.config":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            attribute = (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv")
                         and isinstance(node.value, ast.Name) and node.value.id == "os")
            imported = isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                alias.name in ("environ", "getenv", "putenv") for alias in node.names)
            if attribute or imported:
                readers.append(f"{name}:{node.lineno}")
    assert readers == []
