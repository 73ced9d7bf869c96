// Status page for people: the data of /mqtt/status, /api/rooms and /api/rates, refreshed
// every 2 s. The rates chart is the server's own per-second counts of the last minutes
// (chatroom/ops/rate_history.py), so it is full as soon as the page opens.
// Everything is set with textContent. The figures' places are drawn with the page
// (templates/status.html, the same labels), so filling them in moves nothing (no layout shift).
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "chat-api-token";   // shared with the chat page
  const INTERVAL_MS = 2000;
  const SERIES = [["received", "in", "received (MQTT)"], ["room", "room", "room messages"], ["sent", "out", "sent (MQTT)"]];

  const tokenRequired = document.body.dataset.tokenRequired === "true";
  let timer = null;                     // the 2-second poll, running only while the token works

  const headers = () => {
    const token = localStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: "Bearer " + token } : {};
  };

  function facts(list, pairs) {
    const nodes = [];
    for (const [label, value] of pairs) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value === null || value === undefined ? "—" : String(value);
      nodes.push(dt, dd);
    }
    list.replaceChildren(...nodes);
  }

  // Today's times without their date: short enough not to wrap (a wrapped line moves the page).
  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    if (isNaN(date)) return iso;
    return date.toDateString() === new Date().toDateString() ? date.toLocaleTimeString() : date.toLocaleString();
  }

  function getJson(url) {
    return fetch(url, { headers: headers() }).then((response) => {
      if (response.status === 401) throw new Error("unauthorized");
      return response.json();
    });
  }

  const round = (value) => String(Number(value.toPrecision(3)));

  // One polyline per series over the window (the right edge is the server's newest second).
  function drawRates(rates) {
    const svg = $("rates");
    const ns = "http://www.w3.org/2000/svg";
    const series = rates.series || {};
    const window = rates.window_seconds || 300;
    const top = Math.max(1, ...SERIES.flatMap(([name]) => series[name] || []));
    const lines = [];
    const said = [];
    for (const [name, css, label] of SERIES) {
      const values = series[name] || [];
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("class", "rate rate-" + css);
      line.setAttribute("points", values.map((value, i) => {
        const x = 300 * (1 - (values.length - 1 - i) / (window - 1));
        return `${x.toFixed(1)},${(79 - 76 * value / top).toFixed(1)}`;
      }).join(" "));
      lines.push(line);
      const peak = values.length ? Math.max(...values) : 0;
      said.push(`${label}: ${values.length ? values[values.length - 1] : 0} now, peak ${peak}`);
    }
    svg.replaceChildren(...lines);
    svg.setAttribute("aria-label", "messages per second over the last 5 minutes, " + said.join("; "));
    $("y-top").textContent = round(top);
    $("y-mid").textContent = round(top / 2);
  }

  const ROOM_COLUMNS = ["room", "members", "web", "devices (MQTT)", "messages", "last message"];

  function render(status, rooms) {
    const mqtt = status.mqtt_status || {};
    const bridge = $("bridge");
    if (status.mqtt_status) {
      bridge.textContent = !mqtt.is_running ? "MQTT off" : mqtt.is_connected ? "MQTT online" : "MQTT offline";
      bridge.className = "badge " + (mqtt.is_connected ? "badge-on" : "badge-off");
    }
    const broker = mqtt.broker_info || {};
    facts($("bridge-facts"), [
      ["broker", broker.host ? `${broker.host}:${broker.port}${broker.tls ? " (TLS)" : ""}` : null],
      ["client id", broker.client_id], ["connected since", when(mqtt.connect_time)],
      ["last message", when(mqtt.last_message_time)], ["last error", mqtt.last_error],
      ["MQTT users", mqtt.mqtt_users_count], ["web users", (status.room || {}).web_users],
    ]);
    facts($("counters"), [
      ["received", mqtt.messages_received], ["sent", mqtt.messages_sent], ["rejected", mqtt.messages_rejected],
      ["duplicates", mqtt.messages_duplicate], ["dropped", mqtt.messages_dropped], ["outbox", mqtt.outbox_size],
      ["reconnects", mqtt.reconnect_count], ["room messages", (status.room || {}).messages_total],
    ]);
    const assistant = status.assistant || {};
    facts($("assistant"), [
      ["state", status.assistant ? (assistant.enabled ? "on" : "off") : null], ["model", assistant.model],
      ["requests", assistant.requests], ["failures", assistant.failures], ["refused", assistant.refused],
      ["in flight", assistant.in_flight],
      ["average answer", assistant.average_latency_ms ? assistant.average_latency_ms + " ms" : null],
    ]);
    $("rooms").replaceChildren(...rooms.map((room) => {
      const row = document.createElement("tr");
      const sources = room.sources || {};
      const values = [room.room, room.members, sources.web || 0, sources.mqtt || 0, room.last_seq,
                      when(room.last_timestamp)];
      values.forEach((value, column) => {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        cell.dataset.label = ROOM_COLUMNS[column];  // a phone shows each row as label: value lines
        row.appendChild(cell);
      });
      row.firstChild.dir = "auto";  // the room's name: its direction is its own (chat.css isolates cells)
      return row;
    }));
  }

  // #error is an alert: written only when what it says changes, or it is read out every 2 s.
  function say(text) {
    if ($("error").textContent !== text) $("error").textContent = text;
  }

  // No token, or a refused one: the form, focused, and no polling (no 401 every 2 s) until
  // a token is given.
  function askForToken(text) {
    if (timer !== null) { clearInterval(timer); timer = null; }
    say(text);
    $("updated").className = "badge badge-off";
    $("token-form").hidden = false;
    $("token").focus();
  }

  function refresh() {
    Promise.all([getJson("/mqtt/status"), getJson("/api/rooms"), getJson("/api/rates")])
      .then(([status, rooms, rates]) => {
        say("");
        render(status, rooms.rooms || []);
        drawRates(rates);
        // The chart is this instance's counts: with several behind a balancer, say which one.
        $("rates-instance").textContent = rates.instance_id ? "· instance " + rates.instance_id : "";
        $("updated").textContent = "updated " + new Date().toLocaleTimeString();
        $("updated").className = "badge badge-on";
      })
      .catch((error) => {
        if (error.message === "unauthorized") askForToken("An access token is needed.");
        else {
          say("Server unreachable.");
          $("updated").className = "badge badge-off";
        }
      });
  }

  function start() {
    refresh();
    if (timer === null) timer = setInterval(refresh, INTERVAL_MS);
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("token-form").hidden = true;
    start();
  });
  if (tokenRequired && !localStorage.getItem(TOKEN_KEY)) askForToken("An access token is needed.");
  else start();
})();
