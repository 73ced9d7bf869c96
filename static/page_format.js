// How the chat page writes things: times, where a message came from, sparklines, and which
// messages read as one group. Built with DOM calls and textContent only: nothing here parses
// HTML, so text from strangers stays text (PROTOCOL 9).
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const GROUP_MS = 5 * 60 * 1000;  // one sender's messages within 5 minutes read as one block

  // Friendly words for the transports; the technical name is the tooltip (title).
  const SOURCES = {
    mqtt: { label: "device", technical: "MQTT device",
            icon: "M7 7h10v10H7z M10 3v4 M14 3v4 M10 17v4 M14 17v4 M3 10h4 M3 14h4 M17 10h4 M17 14h4" },
    web: { label: "web", technical: "web page (Socket.IO)",
           icon: "M21 12a9 9 0 1 1-18 0a9 9 0 1 1 18 0z M3 12h18 M12 3c3.5 3.5 3.5 14.5 0 18 M12 3c-3.5 3.5-3.5 14.5 0 18" },
    http: { label: "script", technical: "script (HTTP API)", icon: "M4 17l6-5-6-5 M12 19h8" },
    ai: { label: "assistant", technical: "AI assistant", icon: "M12 3l2 6 6 2-6 2-2 6-2-6-6-2 6-2z" },
  };
  const sourceOf = (source) => (Object.hasOwn(SOURCES, source) ? SOURCES[source] : null);

  function icon(path) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "src-icon");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const line = document.createElementNS(SVG, "path");
    line.setAttribute("d", path);
    svg.appendChild(line);
    return svg;
  }

  // <span class="src" title="MQTT device"><svg …/>device</span>
  function sourceTag(source) {
    const known = sourceOf(source);
    const tag = document.createElement("span");
    tag.className = "src";
    if (known) {
      tag.title = known.technical;
      tag.append(icon(known.icon), known.label);
    } else {
      tag.textContent = String(source ?? "");
    }
    return tag;
  }

  const sameDay = (a, b) => a.toDateString() === b.toDateString();

  // <time datetime="…" title="Saturday, 5 December 2026 at 10:41:07">10:41</time>; another day carries its date.
  function timeNode(iso) {
    const node = document.createElement("time");
    node.className = "when";
    const date = new Date(iso);
    if (!iso || isNaN(date)) return node;
    node.dateTime = date.toISOString();
    node.title = date.toLocaleString([], { dateStyle: "full", timeStyle: "medium" });
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    node.textContent = sameDay(date, new Date()) ? time
      : date.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" }) + " " + time;
    return node;
  }

  // Does `node` continue the message before it (same sender, within GROUP_MS)?
  function continues(previous, node) {
    if (!previous || !node || !previous.dataset.sender || previous.dataset.sender !== node.dataset.sender) return false;
    const gap = Number(node.dataset.time) - Number(previous.dataset.time);
    return gap >= 0 && gap <= GROUP_MS;
  }

  function regroup(node) {
    if (node && node.classList) node.classList.toggle("grouped", continues(node.previousElementSibling, node));
  }

  const number = (value) => String(Number(value.toPrecision(6)));

  // A sparkline with its scale: the line between min and max, the latest value as a dot,
  // min and max written under it, and a label saying the same for screen readers.
  function sparkline(key, points) {
    const box = document.createElement("div");
    box.className = "spark-box";
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "-2 0 104 24");  // room for the dots at both ends
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    box.appendChild(svg);
    const values = points.map((p) => p.value);
    if (!values.length) {
      svg.setAttribute("aria-label", key + ": no numbers yet");
      return box;
    }
    const low = Math.min(...values), high = Math.max(...values), span = high - low || 1;
    const y = (v) => (high === low ? 12 : 22 - (v - low) * 20 / span).toFixed(1);
    const x = (i) => (values.length === 1 ? 100 : i * 100 / (values.length - 1)).toFixed(1);
    const base = document.createElementNS(SVG, "line");  // the minimum's level
    for (const [name, value] of [["x1", 0], ["x2", 100], ["y1", y(low)], ["y2", y(low)]]) base.setAttribute(name, value);
    svg.appendChild(base);
    if (values.length > 1) {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", values.map((v, i) => x(i) + "," + y(v)).join(" "));
      svg.appendChild(line);
    }
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", x(values.length - 1));
    dot.setAttribute("cy", y(values[values.length - 1]));
    dot.setAttribute("r", "1.6");
    svg.appendChild(dot);
    svg.setAttribute("aria-label", `${key}: last ${values.length} readings from ${number(low)} to ${number(high)}, ` +
                     `latest ${number(values[values.length - 1])}`);
    const range = document.createElement("span");
    range.className = "spark-range";
    range.setAttribute("aria-hidden", "true");  // the image's label says it
    range.textContent = `min ${number(low)} · max ${number(high)}`;
    box.appendChild(range);
    return box;
  }

  window.pageFormat = { sourceTag, timeNode, regroup, sparkline, sourceLabel: (s) => (sourceOf(s) || {}).label || s };
})();
