// Status page for people: the data of /mqtt/status and /api/rooms, refreshed every 2 s,
// with message rates over the last 5 minutes computed from the counters' deltas.
// Everything is set with textContent.
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "chat-api-token";   // shared with the chat page
  const INTERVAL_MS = 2000;
  const WINDOW_MS = 5 * 60 * 1000;
  const samples = [];                   // {t, received, room, sent}

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

  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return isNaN(date) ? iso : date.toLocaleString();
  }

  function getJson(url) {
    return fetch(url, { headers: headers() }).then((response) => {
      if (response.status === 401) throw new Error("unauthorized");
      return response.json();
    });
  }

  function drawRates() {
    const svg = $("rates");
    const ns = "http://www.w3.org/2000/svg";
    const now = Date.now();
    const rates = { in: [], room: [], out: [] };
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i];
      const seconds = (b.t - a.t) / 1000 || 1;
      const x = 300 * (1 - (now - b.t) / WINDOW_MS);
      rates.in.push([x, Math.max(0, (b.received - a.received) / seconds)]);
      rates.room.push([x, Math.max(0, (b.room - a.room) / seconds)]);
      rates.out.push([x, Math.max(0, (b.sent - a.sent) / seconds)]);
    }
    const top = Math.max(1, ...rates.in.map((p) => p[1]), ...rates.room.map((p) => p[1]), ...rates.out.map((p) => p[1]));
    const lines = Object.entries(rates).map(([name, points]) => {
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("class", "rate rate-" + name);
      line.setAttribute("points", points.map(([x, y]) => `${x.toFixed(1)},${(78 - 74 * y / top).toFixed(1)}`).join(" "));
      return line;
    });
    svg.replaceChildren(...lines);
    $("rates-top").textContent = "top of the chart: " + top.toFixed(1) + " messages/s";
  }

  function render(status, rooms) {
    const mqtt = status.mqtt_status || {};
    const bridge = $("bridge");
    bridge.textContent = !mqtt.is_running ? "MQTT off" : mqtt.is_connected ? "MQTT online" : "MQTT offline";
    bridge.className = "badge " + (mqtt.is_connected ? "badge-on" : "badge-off");
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
      ["state", assistant.enabled ? "on" : "off"], ["model", assistant.model], ["requests", assistant.requests],
      ["failures", assistant.failures], ["refused", assistant.refused], ["in flight", assistant.in_flight],
      ["average answer", assistant.average_latency_ms ? assistant.average_latency_ms + " ms" : null],
    ]);
    $("rooms").replaceChildren(...rooms.map((room) => {
      const row = document.createElement("tr");
      const sources = room.sources || {};
      for (const value of [room.room, room.members, sources.web || 0, sources.mqtt || 0, room.last_seq,
                           when(room.last_timestamp)]) {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.appendChild(cell);
      }
      row.firstChild.dir = "auto";  // the room's name: its direction is its own (chat.css isolates cells)
      return row;
    }));
    samples.push({ t: Date.now(), received: mqtt.messages_received || 0, room: (status.room || {}).messages_total || 0,
                   sent: mqtt.messages_sent || 0 });
    while (samples.length && Date.now() - samples[0].t > WINDOW_MS) samples.shift();
    drawRates();
  }

  function refresh() {
    Promise.all([getJson("/mqtt/status"), getJson("/api/rooms")])
      .then(([status, rooms]) => {
        $("error").textContent = "";
        render(status, rooms.rooms || []);
        $("updated").textContent = "updated " + new Date().toLocaleTimeString();
        $("updated").className = "badge badge-on";
      })
      .catch((error) => {
        if (error.message === "unauthorized") $("token-form").hidden = false;
        $("error").textContent = error.message === "unauthorized" ? "An access token is needed." : "Server unreachable.";
        $("updated").className = "badge badge-off";
      });
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token-form").hidden = true;
    refresh();
  });
  refresh();
  setInterval(refresh, INTERVAL_MS);
})();
