"""Build an Arduino sketch for this PC against the real PubSubClient and ArduinoJson.

The Arduino IDE turns a `.ino` into C++ by adding `#include <Arduino.h>` and a
prototype for every function, so functions may be used before they are
defined; `sketch_to_cpp` does the same. The sketch itself is never edited.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ARDUINO = Path(__file__).resolve().parent / "arduino"
HOST = ARDUINO / "host"
LIBRARIES = ARDUINO / "libraries"

# A top-level function definition: return type, name, parameters, then `{`.
FUNCTION = re.compile(r"^([A-Za-z_][\w\s\*&:<>]*?[\s\*&])([A-Za-z_]\w*)\s*\(([^;{}()]*)\)\s*\{", re.M)


def sketch_to_cpp(source: str) -> str:
    found = [m for m in FUNCTION.finditer(source) if m.group(2) not in ("if", "while", "for", "switch")]
    if not found:
        return "#include <Arduino.h>\n" + source
    prototypes = [f"{m.group(1).strip()} {m.group(2)}({m.group(3)});" for m in found]
    # Like arduino-cli: the prototypes go right before the first function definition
    # (after the sketch's includes and types, outside any #if around an include).
    first = found[0].start()
    return ("#include <Arduino.h>\n" + source[:first] + "\n".join(prototypes) + "\n"
            + f"#line {source[:first].count(chr(10)) + 1}\n" + source[first:])


def build_sketch(ino: Path, workdir: Path, defines: dict[str, str] | None = None,
                 werror: bool = False) -> Path:
    """Compile `ino` with g++ into `workdir`; returns the executable."""
    workdir.mkdir(parents=True, exist_ok=True)
    cpp = workdir / (ino.stem + ".cpp")
    cpp.write_text(sketch_to_cpp(ino.read_text(encoding="utf-8")), encoding="utf-8")
    binary = workdir / ino.stem
    flags = ["-std=gnu++17", "-O1", "-Wall", "-DARDUINO=10819", "-DESP32",
             *(f"-D{name}={value}" for name, value in (defines or {}).items()),
             f"-I{HOST}", f"-I{LIBRARIES / 'PubSubClient'}", f"-I{LIBRARIES / 'ArduinoJson'}"]
    # -Werror applies to the sketch only: the vendored libraries are compiled as they are.
    objects = []
    for source, strict in ((cpp, werror), (HOST / "host_main.cpp", False),
                           (LIBRARIES / "PubSubClient" / "PubSubClient.cpp", False)):
        obj = workdir / (source.stem + ".o")
        subprocess.run(["g++", *flags, *(["-Wextra", "-Werror"] if strict else []), "-c", str(source),
                        "-o", str(obj)], check=True, capture_output=True, text=True)
        objects.append(str(obj))
    subprocess.run(["g++", *objects, "-o", str(binary)], check=True, capture_output=True, text=True)
    return binary
