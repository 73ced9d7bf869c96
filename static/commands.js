// Device controls (PROTOCOL 11): the declared commands of the room's devices as controls
// next to their readings (toggle, number, select, text), the device's answer or the timeout
// beside each, and `/cmd <device> <command> <value>` from the composer.
// Works beside chat.js through window.chatPage (its socket and token headers) and the
// "chat:room" event. Everything a device declared is shown with textContent, never parsed as HTML.
(function () {
  "use strict";

  const page = window.chatPage;
  const list = document.getElementById("device-commands");
  if (!page || !list) return;
  const socket = page.socket;
  const MAX_DEVICES = 50;           // bounds (PROTOCOL 9): what strangers declare cannot grow the page
  const REFRESH_DELAY = 300;        // ms: presence changes come in bursts
  const MIN_REFRESH_GAP = 2000;     // ms between two refreshes caused by device messages
  const own = (object, key) => (object != null && Object.hasOwn(object, key) ? object[key] : undefined);
  const shown = (text) => page.capMarks(String(text ?? ""));

  let room = null;
  let devices = [];                 // [{client_id, username, online, commands}]
  const answers = new Map();        // "client_id\ncommand" -> {text, state}
  let refreshTimer = null;
  let lastDeviceRefresh = 0;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = shown(text);
    return node;
  }

  function refresh() {
    refreshTimer = null;
    if (!room) { devices = []; render(); return; }
    const asked = room;
    fetch("/api/commands?room=" + encodeURIComponent(asked), { headers: page.authHeaders() })
      .then((response) => response.json())
      .then((body) => {
        if (asked !== room || !body || !Array.isArray(body.devices)) return;
        devices = body.devices.slice(0, MAX_DEVICES);
        render();
      })
      .catch(() => {});
  }

  function refreshSoon() {
    if (refreshTimer === null) refreshTimer = setTimeout(refresh, REFRESH_DELAY);
  }

  function answerKey(clientId, command) { return clientId + "\n" + command; }

  function showAnswer(clientId, command, text, state) {
    answers.set(answerKey(clientId, command), { text: text, state: state });
    while (answers.size > MAX_DEVICES * 16) answers.delete(answers.keys().next().value);
    for (const output of list.querySelectorAll("output.command-answer")) {
      if (output.dataset.device === clientId && output.dataset.command === command) {
        output.textContent = shown(text);
        output.className = "command-answer answer-" + state;
      }
    }
  }

  function describe(ack) {
    if (!ack) return ["no answer", "error"];
    if (ack.ok) return ["ok" + (ack.result === undefined || ack.result === null ? "" : ": " + JSON.stringify(ack.result)), "ok"];
    if (ack.code === "timeout") return ["no answer in time", "timeout"];
    return [(ack.code === "refused" ? "refused: " : "") + String(ack.error || ack.code || "failed"), "error"];
  }

  // value: as the control holds it (a boolean, a number, a text); a text is read by the server.
  function send(clientId, command, value, whenDone) {
    showAnswer(clientId, command, "sending…", "pending");
    socket.emit("send_command", { device: clientId, command: command, value: value }, (ack) => {
      const [text, state] = describe(ack);
      showAnswer(clientId, command, text, state);
      if (whenDone) whenDone(ack);
    });
  }

  function control(device, name, spec) {
    const id = device.client_id;
    const type = own(spec, "type");
    const label = el("label", "command-label", name);
    let input;
    if (type === "bool") {
      input = el("input", "command-toggle");
      input.type = "checkbox";
      input.setAttribute("role", "switch");
      input.addEventListener("change", () => send(id, name, input.checked));
      label.prepend(input);
      return [label];
    }
    if (type === "enum") {
      input = el("select", "command-select");
      input.append(el("option", "", "—"));
      for (const option of own(spec, "options") || []) {
        const item = el("option", "", option);
        item.value = String(option);
        input.append(item);
      }
      input.addEventListener("change", () => { if (input.selectedIndex > 0) send(id, name, input.value); });
      return [label, input];
    }
    input = el("input", "command-input");
    if (type === "number") {
      input.type = "number";
      for (const key of ["min", "max", "step"]) {
        if (typeof own(spec, key) === "number") input[key] = String(own(spec, key));
      }
      if (typeof own(spec, "step") !== "number") input.step = "any";
    } else {
      input.type = "text";
      input.maxLength = typeof own(spec, "max") === "number" ? own(spec, "max") : 255;
    }
    const button = el("button", "command-send", "Set");
    button.type = "button";
    button.addEventListener("click", () => {
      if (type === "number") {
        if (input.value === "" || !input.checkValidity()) { showAnswer(id, name, "not a valid number", "error"); return; }
        send(id, name, Number(input.value));
      } else send(id, name, input.value);
    });
    return [label, input, button];
  }

  function render() {
    list.replaceChildren();
    for (const device of devices) {
      const commands = own(device, "commands") || {};
      const item = el("li", "device-controls" + (device.online ? "" : " offline"));
      item.dataset.device = String(device.client_id);
      const head = el("div", "meta");
      const who = el("bdi", "who", device.username);
      who.dir = "auto";
      head.append(who, el("span", "src", device.online ? "controls" : "offline"));
      item.append(head);
      for (const name of Object.keys(commands)) {
        const row = el("div", "command-row");
        row.dataset.command = name;
        row.append(...control(device, name, own(commands, name)));
        const output = el("output", "command-answer");
        output.dataset.device = String(device.client_id);
        output.dataset.command = name;
        const answer = answers.get(answerKey(device.client_id, name));
        if (answer) { output.textContent = shown(answer.text); output.classList.add("answer-" + answer.state); }
        row.append(output);
        item.append(row);
      }
      list.append(item);
    }
  }

  // `/cmd <device> <command> <value>`: the device is the longest known name (or client_id)
  // the line starts with, else its first word; the value is the rest, read by the server.
  function fromComposer(text) {
    const match = /^\s*\/cmd(?:\s+|$)([\s\S]*)$/.exec(text);
    if (!match) return false;
    const rest = match[1].trim();
    const names = devices.flatMap((d) => [String(d.username), String(d.client_id)])
      .filter((name) => rest === name || rest.startsWith(name + " ")).sort((a, b) => b.length - a.length);
    const device = names.length ? names[0] : rest.split(/\s+/)[0];
    const [command, ...value] = rest.slice(device.length).trim().split(/\s+/);
    const error = document.getElementById("send-error");
    if (!device || !command || !value.length) {
      if (error) error.textContent = "usage: /cmd <device> <command> <value>";
      return true;
    }
    socket.emit("send_command", { device: device, command: command, value: value.join(" ") }, (ack) => {
      if (error) error.textContent = ack && ack.ok ? "" : shown(describe(ack)[0]);
    });
    return true;
  }

  document.addEventListener("chat:room", (event) => {
    room = event.detail ? event.detail.room : null;
    answers.clear();
    refresh();
  });
  socket.on("user_list", refreshSoon);
  socket.on("system_message", (event) => {
    if (event && event.event === "command_result" && typeof event.client_id === "string") {
      const [text, state] = event.status === "timeout" ? ["no answer in time", "timeout"]
        : event.ok ? ["ok" + (event.result == null ? "" : ": " + JSON.stringify(event.result)), "ok"]
          : ["refused: " + String(event.error ?? ""), "error"];
      showAnswer(event.client_id, String(event.command), text, state);
    }
  });
  socket.on("chat_message", (msg) => {
    // A device that starts declaring shows up with its next message; at most one look per 2 s.
    if (msg && msg.source === "mqtt" && Date.now() - lastDeviceRefresh > MIN_REFRESH_GAP
        && !devices.some((d) => d.client_id === msg.client_id)) {
      lastDeviceRefresh = Date.now();
      refreshSoon();
    }
  });
  window.chatCommands = { fromComposer: fromComposer, refresh: refresh };
})();
