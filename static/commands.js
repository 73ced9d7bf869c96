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
  // A device whose message caused a refresh that did not list it declares nothing (or is
  // beyond the 50 shown): its messages cause no refresh for QUIET_FOR ms (a join does).
  const QUIET_FOR = 5 * 60 * 1000;
  const MAX_QUIET = 500;            // ids remembered so (the least recently added forgotten)
  const own = (object, key) => (object != null && Object.hasOwn(object, key) ? object[key] : undefined);
  const shown = (text) => page.capMarks(String(text ?? ""));

  let room = null;
  let devices = [];                 // [{client_id, username, online, commands}]
  const answers = new Map();        // "client_id\ncommand" -> {text, state}
  let refreshTimer = null;
  let lastDeviceRefresh = 0;
  const quiet = new Map();          // client_id -> when a refresh found it declaring nothing
  let askedFor = [];                // ids whose messages caused the refresh on its way

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
    const causes = askedFor;
    askedFor = [];
    fetch("/api/commands?room=" + encodeURIComponent(asked), { headers: page.authHeaders() })
      .then((response) => response.json())
      .then((body) => {
        if (asked !== room || !body || !Array.isArray(body.devices)) return;
        devices = body.devices.slice(0, MAX_DEVICES);
        for (const id of causes) {
          if (devices.some((d) => d.client_id === id)) continue;
          quiet.delete(id);
          quiet.set(id, Date.now());
          if (quiet.size > MAX_QUIET) quiet.delete(quiet.keys().next().value);
        }
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

  // A switch shows what the device last acknowledged: a refused or unanswered change flips back,
  // and a row built again (its declaration changed, a room came back) starts from it.
  const acked = new Map();          // "client_id\ncommand" -> the last acknowledged boolean
  let nextId = 0;                   // control ids: each control's <label for> names it

  function control(device, name, spec) {
    const id = device.client_id;
    const key = answerKey(id, name);
    const type = own(spec, "type");
    const label = el("label", "command-label", name);
    const controlId = "command-" + (++nextId);
    let input;
    if (type === "bool") {
      input = el("input", "command-toggle");
      input.type = "checkbox";
      input.id = controlId;
      input.setAttribute("role", "switch");
      input.checked = acked.get(key) === true;
      input.commandKey = key;
      input.addEventListener("change", () => {
        const wanted = input.checked;
        send(id, name, wanted, (ack) => {
          if (ack && ack.ok) acked.set(key, wanted);
          while (acked.size > MAX_DEVICES * 16) acked.delete(acked.keys().next().value);
          for (const toggle of list.querySelectorAll("input.command-toggle")) {  // the row may be new
            if (toggle.commandKey === key) toggle.checked = acked.get(key) === true;
          }
        });
      });
      label.prepend(input);  // nested: the label names it
      return [label];
    }
    label.htmlFor = controlId;
    if (type === "enum") {
      input = el("select", "command-select");
      input.id = controlId;
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
    input.id = controlId;
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

  // Shown controls, updated in place on every refresh (a user_list comes with every join and
  // leave): what someone is typing, the focus and the answers stay. A row is built again only
  // when its declaration changed. client_id -> {item, state, rows: Map(command -> {row, spec})}.
  const shownDevices = new Map();

  function deviceItem(device) {
    const item = el("li", "device-controls");
    item.dataset.device = String(device.client_id);
    const head = el("div", "meta");
    const who = el("bdi", "who", device.username);
    who.dir = "auto";
    const state = el("span", "src device-state");
    head.append(who, state);
    item.append(head);
    return { item: item, who: who, state: state, rows: new Map() };
  }

  function commandRow(device, name, spec) {
    const row = el("div", "command-row");
    row.dataset.command = name;
    row.append(...control(device, name, spec));
    const output = el("output", "command-answer");
    output.dataset.device = String(device.client_id);
    output.dataset.command = name;
    const answer = answers.get(answerKey(device.client_id, name));
    if (answer) { output.textContent = shown(answer.text); output.classList.add("answer-" + answer.state); }
    row.append(output);
    return row;
  }

  // Puts `node` at `index` of `parent` unless it is there already (moving a node drops its focus).
  function place(parent, node, index) {
    const at = parent.children[index] || null;
    if (at !== node) parent.insertBefore(node, at);
  }

  function render() {
    const wanted = new Set(devices.map((device) => String(device.client_id)));
    for (const [clientId, entry] of shownDevices) {
      if (!wanted.has(clientId)) { entry.item.remove(); shownDevices.delete(clientId); }
    }
    devices.forEach((device, index) => {
      const clientId = String(device.client_id);
      let entry = shownDevices.get(clientId);
      if (!entry) shownDevices.set(clientId, (entry = deviceItem(device)));
      place(list, entry.item, index);
      const offline = !device.online;
      if (entry.who.textContent !== shown(device.username)) entry.who.textContent = shown(device.username);
      // Offline: said in words (muted, like every source label) and the controls are disabled;
      // no dimming, which took the text below 4.5:1.
      entry.item.classList.toggle("offline", offline);
      entry.state.textContent = offline ? "offline" : "controls";
      const commands = own(device, "commands") || {};
      const names = Object.keys(commands);
      for (const [name, shownRow] of entry.rows) {
        if (!names.includes(name)) { shownRow.row.remove(); entry.rows.delete(name); }
      }
      names.forEach((name, at) => {
        const spec = JSON.stringify(own(commands, name) ?? null);
        let shownRow = entry.rows.get(name);
        if (!shownRow || shownRow.spec !== spec) {
          const row = commandRow(device, name, own(commands, name));
          if (shownRow) shownRow.row.replaceWith(row);
          entry.rows.set(name, (shownRow = { row: row, spec: spec }));
        }
        place(entry.item, shownRow.row, at + 1);  // after the head
        for (const node of shownRow.row.querySelectorAll("input, select, button")) {
          node.disabled = offline;
          if (offline) node.setAttribute("aria-disabled", "true");
          else node.removeAttribute("aria-disabled");
        }
      });
    });
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
    const next = event.detail ? event.detail.room : null;
    if (next !== room) {  // a rejoin of the same room (a reconnect) keeps the controls and answers
      answers.clear();
      for (const entry of shownDevices.values()) entry.item.remove();
      shownDevices.clear();
    }
    room = next;
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
  function isQuiet(id) {
    const since = quiet.get(id);
    return since !== undefined && Date.now() - since < QUIET_FOR;
  }

  socket.on("chat_message", (msg) => {
    // A device that starts declaring shows up with its next message; at most one look per 2 s,
    // and none for a device the last look found declaring nothing (for QUIET_FOR).
    if (msg && msg.source === "mqtt" && typeof msg.client_id === "string"
        && Date.now() - lastDeviceRefresh > MIN_REFRESH_GAP
        && !devices.some((d) => d.client_id === msg.client_id) && !isQuiet(msg.client_id)) {
      lastDeviceRefresh = Date.now();
      askedFor.push(msg.client_id);
      refreshSoon();
    }
  });
  // quietIds: the devices whose messages cause no look now (for the page's own tests and debugging).
  window.chatCommands = { fromComposer: fromComposer, refresh: refresh,
    quietIds: () => [...quiet.keys()].filter(isQuiet) };
})();
