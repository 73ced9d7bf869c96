"""The docs say what the code does: fast checks (no broker, no server; files are read and
modules imported) that fail as soon as one of them changes without the other.

- `.env.example` lists exactly the variables `Settings.from_env` reads, with their defaults;
- docs/PROTOCOL.md's "Error codes" table lists exactly the codes the product code can send,
  with the HTTP status it answers them with;
- docs/PROTOCOL.md's topic table lists exactly the topics the bridge subscribes to and
  publishes (`Topics`, `Discovery`, the bridge);
- every test a doc cites as proof exists, and every repository file a doc names exists.

Everything the code side is compared with is found in the code (by ast, or by calling it),
never in a list kept here. Only files inside the repository are read: CI runs on a clean
clone, without ../shared.
"""
from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path
from unittest.mock import MagicMock

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatroom.config import Settings  # noqa: E402
from mqtt_service.bridge import MqttBridge  # noqa: E402
from mqtt_service.homeassistant.command_entities import COMPONENTS as COMMAND_COMPONENTS  # noqa: E402
from mqtt_service.homeassistant.command_entities import CommandEntities  # noqa: E402
from mqtt_service.homeassistant.discovery import Discovery  # noqa: E402
from mqtt_service.topics import Topics  # noqa: E402

PROTOCOL = ROOT / "docs" / "PROTOCOL.md"
ENV_EXAMPLE = ROOT / ".env.example"
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
PRODUCT = [ROOT / "app.py", *sorted((ROOT / "chatroom").rglob("*.py")), *sorted((ROOT / "mqtt_service").rglob("*.py"))]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _parsed(paths: list[Path]) -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in paths}


def _section(path: Path, heading: str) -> str:
    """The text under `## heading` up to the next `## ` heading."""
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{_rel(path)} has no '## {heading}' section"
    return match.group(1)


def _table_rows(section: str) -> list[list[str]]:
    """The cells of each body row of the Markdown tables in `section`."""
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-| :]+\|", line.strip()):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:] if rows else rows  # the first row is the header


def _sorted(items) -> list:
    return sorted(items, key=str)


# --- configuration ------------------------------------------------------------------


class _RecordingEnv(dict):
    """An empty environment that remembers every name it was asked for."""

    def __init__(self):
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


def _config_reads() -> dict[str, str | None]:
    """Every variable Settings.from_env reads -> its default text (None when not a literal).

    Both what a call of from_env asks its mapping for, and every `<reader>.get("NAME", default, …)`
    in chatroom/config.py (a variable read only under some condition is seen there)."""
    env = _RecordingEnv()
    Settings.from_env(env)
    reads: dict[str, str | None] = dict.fromkeys(env.asked)
    config = ROOT / "chatroom" / "config.py"
    for node in ast.walk(_parsed([config])[config]):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                and re.fullmatch(r"[A-Z][A-Z0-9_]*", node.args[0].value)):
            default = node.args[1] if len(node.args) > 1 else None
            reads[node.args[0].value] = default.value if isinstance(default, ast.Constant) else None
    return reads


def _env_example() -> dict[str, str]:
    """NAME -> value of every `NAME=value` line of .env.example, commented out (`# NAME=`) or not."""
    listed = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\s*#?\s*([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            listed[match.group(1)] = match.group(2).strip()
    return listed


def test_env_example_lists_exactly_the_variables_config_reads_with_their_defaults():
    reads, listed = _config_reads(), _env_example()
    assert len(reads) > 20, f"found only {sorted(reads)} read by chatroom/config.py: is the scan still right?"
    unlisted = sorted(set(reads) - set(listed))
    assert not unlisted, f"read by chatroom/config.py (Settings.from_env) but missing from .env.example: {unlisted}"
    unread = sorted(set(listed) - set(reads))
    assert not unread, f"in .env.example but never read by chatroom/config.py (Settings.from_env): {unread}"
    wrong = {name: {"config.py": reads[name], ".env.example": listed[name]}
             for name in sorted(reads) if reads[name] is not None and reads[name] != listed[name]}
    assert not wrong, f".env.example gives another default than chatroom/config.py: {wrong}"


# --- error codes --------------------------------------------------------------------


def _name_of(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _arg(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[position] if len(call.args) > position else None


def _code_parameter(function: ast.FunctionDef) -> int | None:
    """Position of a parameter called `code` among a call's arguments (self not counted)."""
    names = [a.arg for a in function.args.posonlyargs + function.args.args]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return names.index("code") if "code" in names else None


def _fixed_code(cls: ast.ClassDef) -> str | None:
    """The code a class passes up itself: `super().__init__("unavailable", …)` in its __init__."""
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            for call in ast.walk(node):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "__init__"
                        and isinstance(call.func.value, ast.Call) and _name_of(call.func.value.func) == "super"
                        and call.args and isinstance(call.args[0], ast.Constant)
                        and isinstance(call.args[0].value, str)):
                    return call.args[0].value
    return None


def _emitted_codes() -> tuple[dict[str, list[str]], list[str]]:
    """code -> where the product code sends it; and the calls whose code cannot be read.

    - calls of an error class (a class whose __init__ takes `code`, and its subclasses): the
      `code` argument, or the code a subclass fixes in its own super().__init__;
    - calls of any other function with a `code` parameter (the web layer's error_response);
    - dict literals with a literal "code" (Socket.IO acks built by hand)."""
    trees = _parsed(PRODUCT)
    classes = {node.name: node for tree in trees.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    home = {node.name: path for path, tree in trees.items() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    functions = {node.name: node for tree in trees.values() for node in ast.walk(tree)
                 if isinstance(node, ast.FunctionDef) and node.name != "__init__" and _code_parameter(node) is not None}

    roots = {}
    for name, cls in classes.items():
        init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is not None and _code_parameter(init) is not None:
            roots[name] = _code_parameter(init)
    errors: dict[str, tuple[int, str | None]] = {name: (position, None) for name, position in roots.items()}
    grown = True
    while grown:  # subclasses, however deep
        grown = False
        for name, cls in classes.items():
            parent = next((_name_of(base) for base in cls.bases if _name_of(base) in errors), None)
            if name not in errors and parent is not None:
                errors[name] = (errors[parent][0], _fixed_code(cls) or errors[parent][1])
                grown = True
    assert errors, "no error class (a class whose __init__ takes `code`) found in the product code"

    found: dict[str, list[str]] = {}
    unreadable: list[str] = []

    def note(code: str, path: Path, node: ast.AST) -> None:
        found.setdefault(code, []).append(f"{_rel(path)}:{node.lineno}")

    for name, (_position, fixed) in errors.items():
        if fixed is not None:
            note(fixed, home[name], classes[name])
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (isinstance(key, ast.Constant) and key.value == "code" and isinstance(value, ast.Constant)
                            and isinstance(value.value, str)):
                        note(value.value, path, node)
            if not isinstance(node, ast.Call):
                continue
            called = _name_of(node.func)
            if called in errors:
                position, fixed = errors[called]
                if fixed is not None:
                    continue
                code = _arg(node, position, "code")
                if isinstance(code, ast.Constant) and isinstance(code.value, str):
                    note(code.value, path, node)
                elif not (isinstance(code, ast.Attribute) and code.attr == "code"):  # passing one on is fine
                    unreadable.append(f"{_rel(path)}:{node.lineno} {called}(…)")
            elif called in functions:
                code = _arg(node, _code_parameter(functions[called]), "code")
                if isinstance(code, ast.Constant) and isinstance(code.value, str):
                    note(code.value, path, node)
    return found, unreadable


def _http_statuses() -> dict[str, int]:
    """code -> HTTP status: `STATUS_OF_CODE` wherever the web layer keeps it."""
    for tree in _parsed(PRODUCT).values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(_name_of(t) == "STATUS_OF_CODE" for t in node.targets):
                return ast.literal_eval(node.value)
    pytest.fail("no STATUS_OF_CODE in the product code: where does the web layer map codes to statuses now?")


def _documented_codes() -> dict[str, str]:
    """code -> the HTTP cell of docs/PROTOCOL.md's "Error codes" table."""
    documented = {}
    for cells in _table_rows(_section(PROTOCOL, "Error codes")):
        match = re.fullmatch(r"`([a-z_]+)`", cells[0])
        assert match, f"docs/PROTOCOL.md 'Error codes': a row whose first cell is not one `code`: {cells}"
        documented[match.group(1)] = cells[1]
    return documented


def test_every_error_code_the_code_sends_is_in_the_protocol_table_and_no_other():
    emitted, unreadable = _emitted_codes()
    assert not unreadable, ("error raised with a code this test cannot read (pass it as a string literal, "
                            f"or teach tests/test_docs_in_step.py where it comes from): {unreadable}")
    assert {"bad_field", "unavailable"} <= set(emitted), f"the scan found only {sorted(emitted)}: is it still right?"
    documented = _documented_codes()
    missing = {code: emitted[code] for code in sorted(set(emitted) - set(documented))}
    assert not missing, f"codes the product code sends but docs/PROTOCOL.md 'Error codes' lacks (code: where): {missing}"
    stale = sorted(set(documented) - set(emitted))
    assert not stale, f"codes in docs/PROTOCOL.md 'Error codes' that no product code sends any more: {stale}"


def test_the_protocol_table_gives_each_code_the_http_status_it_gets():
    statuses, documented = _http_statuses(), _documented_codes()
    unknown = sorted(set(statuses) - set(documented))
    assert not unknown, f"STATUS_OF_CODE maps codes docs/PROTOCOL.md 'Error codes' does not list: {unknown}"
    wrong = {code: {"STATUS_OF_CODE": status, "docs/PROTOCOL.md": documented[code]}
             for code, status in statuses.items() if documented[code] != str(status)}
    assert not wrong, f"docs/PROTOCOL.md 'Error codes' gives another HTTP status: {wrong}"
    odd = {code: cell for code, cell in documented.items() if code not in statuses and cell not in ("400", "—")}
    assert not odd, f"docs/PROTOCOL.md 'Error codes': a code outside STATUS_OF_CODE is 400 (or '—', never HTTP): {odd}"


# --- topics -------------------------------------------------------------------------

HOLE = "zq9"  # a value every topic builder keeps as it is (a plain id, a lower-case key, a room)


def _canonical(pattern: str) -> str:
    """`P/R/messages/in/<client_id>`, `P/+/messages/in/+` and `P/zq9/messages/in/zq9` all
    become `P/<>/messages/in/<>`: each placeholder, room or wildcard is one hole."""
    levels = pattern.replace(HOLE, "<>").split("/")
    return "/".join("<>" if level in ("R", "+") else re.sub(r"<[^>]*>", "<>", level) for level in levels)


def _code_topics() -> dict[str, str]:
    """canonical pattern -> how the code builds it, for every topic the bridge uses."""
    built: dict[str, str] = {}
    topics = Topics("P")
    for name, method in inspect.getmembers(topics, inspect.ismethod):
        if name.startswith("_") or name in ("parse", "parse_device", "subscriptions", "device_subscriptions"):
            continue
        parameters = inspect.signature(method).parameters.values()
        required = sum(parameter.default is inspect.Parameter.empty for parameter in parameters)
        calls = ([] if required else [()]) + ([(HOLE,) * max(required, 1)] if parameters else [])
        for args in calls:
            built.setdefault(_canonical(method(*args)), f"Topics.{name}({', '.join(map(repr, args))})")
    for only in (False, True):
        for topic in topics.subscriptions(device_topics_only=only):
            built.setdefault(_canonical(topic), f"Topics.subscriptions(device_topics_only={only})")
    for topic in topics.device_subscriptions(home_assistant=True):
        built.setdefault(_canonical(topic), "Topics.device_subscriptions()")
    for instance in (None, HOLE):
        discovery = Discovery("P", HOLE, HOLE, instance)
        built[_canonical(discovery.bridge().topic)] = f"Discovery(instance_id={instance}).bridge()"
    built[_canonical(discovery.state_topic(HOLE))] = "Discovery.state_topic"
    built[_canonical(discovery.availability_topic(HOLE))] = "Discovery.availability_topic"
    for value in (1.5, True, "text"):
        component = discovery.component_of(value)
        built[_canonical(discovery.config_topic(component, HOLE, HOLE))] = f"Discovery.config_topic({component!r})"
    entities = CommandEntities(discovery, topics)
    for component in COMMAND_COMPONENTS:
        built[_canonical(entities.config_topic(component, HOLE, HOLE))] = f"CommandEntities.config_topic({component!r})"
    one = {"MQTT_TOPIC_PREFIX": "P", "HA_DISCOVERY_PREFIX": HOLE, "DATABASE_PATH": ":memory:"}
    several = {**one, "REDIS_URL": "redis://localhost", "MQTT_SHARED_GROUP": "g", "INSTANCE_ID": HOLE}
    for env in (one, several):
        bridge = MqttBridge(Settings.from_env(env), MagicMock(), MagicMock())  # builds its topics; connects nothing
        built.setdefault(_canonical(bridge.ha_status_topic), "MqttBridge.ha_status_topic")
        built.setdefault(_canonical(bridge.state_topic), f"MqttBridge.state_topic ({'several' if env is several else 'one'})")
    return built


def _documented_topics() -> dict[str, str]:
    """canonical pattern -> as written, for every pattern in the first column of docs/PROTOCOL.md's topic table."""
    documented = {}
    rows = _table_rows(_section(PROTOCOL, "Topics"))
    assert rows, "docs/PROTOCOL.md '## Topics' has no table"
    for cells in rows:
        for pattern in re.findall(r"`([^`]+)`", cells[0]):
            documented[_canonical(pattern.replace("<HA_DISCOVERY_PREFIX>", HOLE))] = pattern
    return documented


def test_every_topic_the_code_uses_is_in_the_protocol_topic_table_and_no_other():
    built, documented = _code_topics(), _documented_topics()
    missing = {pattern: how for pattern, how in sorted(built.items()) if pattern not in documented}
    assert not missing, f"topics the code builds but docs/PROTOCOL.md's topic table lacks ('<>' = any level): {missing}"
    stale = _sorted(written for pattern, written in documented.items() if pattern not in built)
    assert not stale, f"topics in docs/PROTOCOL.md's topic table that the code never builds: {stale}"


# --- what the docs cite -------------------------------------------------------------


def _test_functions() -> dict[str, set[str]]:
    """tests/<file>.py -> the names of the test functions defined in it."""
    return {_rel(path): set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
            for path in sorted((ROOT / "tests").rglob("test_*.py"))}


def test_every_test_a_doc_cites_exists():
    defined = _test_functions()
    everywhere = set().union(*defined.values())

    def exists(name: str, prefix: bool, among: set[str]) -> bool:
        return any(test.startswith(name) for test in among) if prefix else name in among

    missing = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for file, name, ellipsis in re.findall(r"((?:tests/)?test_\w+\.py)::(test_\w+)(…)?", text):
            path = file if file.startswith("tests/") else f"tests/{file}"
            if path not in defined or not exists(name, bool(ellipsis), defined[path]):
                missing.append(f"{_rel(doc)}: {file}::{name}{ellipsis}")
        for name, ellipsis in re.findall(r"(?<![\w/.:])(test_\w+)(?![\w.]|::)(…)?", text):
            if not exists(name, bool(ellipsis), everywhere):
                missing.append(f"{_rel(doc)}: {name}{ellipsis}")
        for file in re.findall(r"(?<![\w/])(?:tests/)?(test_\w+\.py)", text):
            if f"tests/{file}" not in defined:
                missing.append(f"{_rel(doc)}: tests/{file}")
    assert not missing, f"tests cited as proof that do not exist (renamed? cite the real one): {sorted(set(missing))}"


def test_every_repository_file_a_doc_names_exists():
    """Module and file paths (`chatroom/core/room.py`, `clients/mosquitto/acl.example`), not
    topics: only names that end in a file extension and start at a top-level folder."""
    folders = "|".join(re.escape(p.name) for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("."))
    pattern = re.compile(rf"(?<![\w/.-])((?:{folders})/[\w./-]*\.(?:py|md|conf|example|ino|js|sh|txt|html|json|toml|ini))\b")
    missing = sorted({f"{_rel(doc)}: {path}" for doc in DOCS
                      for path in pattern.findall(doc.read_text(encoding="utf-8")) if not (ROOT / path).exists()})
    assert not missing, f"paths named in the docs that are not in the repository (moved? fix the doc): {missing}"


def _anchors(doc: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces -> '-'."""
    headings = re.findall(r"^#+ (.+)$", doc.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_link_between_the_docs_reaches_its_file_and_heading():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check here
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                broken.append(f"{_rel(doc)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{_rel(doc)}: {target} (no such heading in {path.name})")
    assert not broken, f"links in the docs that lead nowhere: {broken}"
