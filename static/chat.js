// Chat page: joins a room over Socket.IO, shows history, live messages,
// who is online (and from where) and the latest device readings. How times, sources and
// sparklines are written is page_format.js; the side panels (a dialog on a phone) panel.js.
// User text is only ever set with textContent: never parsed as HTML. It is shown through
// userText (bidi-isolated, combining-mark stacks capped), and user data is read through
// own() (PROTOCOL 9: hostile text).
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const aiName = document.body.dataset.aiName || "AI";
  const { sourceTag, timeNode, regroup, sparkline } = window.pageFormat;
  const panel = window.chatPanel;

  // A key of sent data is data: `constructor` or `__proto__` must not reach Object.prototype.
  const own = (object, key) => (object != null && Object.hasOwn(object, key) ? object[key] : undefined);

  // Hundreds of combining marks on one letter paint over the page: runs longer than
  // MAX_MARKS are cut when shown (scripts that stack marks need fewer than that).
  const MAX_MARKS = 4;
  const MARK_RUNS = new RegExp(`(\\p{M}{${MAX_MARKS}})\\p{M}+`, "gu");
  const capMarks = (text) => String(text ?? "").replace(MARK_RUNS, "$1");

  // API_TOKEN: the page asks once, keeps it, and sends it on connect and with every request.
  const TOKEN_KEY = "chat-api-token";
  const tokenRequired = document.body.dataset.tokenRequired === "true";
  const authHeaders = () => {
    const token = localStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: "Bearer " + token } : {};
  };
  // Readings are shown as the device sent them: JSON.parse makes 21.0 the number 21, so
  // the decoder's reviver keeps the source text of such numbers beside their object
  // (the engine hands revivers the source text) and the page prints that text.
  const numberTexts = new WeakMap();  // object -> Map(key -> source text): keys are the sender's
  function keepNumberText(key, value, context) {
    if (typeof value === "number" && context && context.source && context.source !== String(value)) {
      let texts = numberTexts.get(this);
      if (!texts) numberTexts.set(this, (texts = new Map()));
      texts.set(key, context.source);
    }
    return value;
  }
  function shown(object, key) {
    const texts = numberTexts.get(object);
    return texts && texts.has(key) ? texts.get(key) : String(own(object, key));
  }
  const defaultParser = new io.Manager({ autoConnect: false });
  const parser = {
    Encoder: defaultParser.encoder.constructor,
    Decoder: class extends defaultParser.decoder.constructor {
      constructor() { super(keepNumberText); }
    },
  };

  const socket = io({
    transports: ["websocket", "polling"],
    parser: parser,
    auth: (send) => send({ token: localStorage.getItem(TOKEN_KEY) || "" }),
  });
  // static/commands.js (device controls, /cmd) works beside this page through these.
  window.chatPage = { socket: socket, authHeaders: authHeaders, capMarks: capMarks };
  const announceRoom = (state) => document.dispatchEvent(new CustomEvent("chat:room", { detail: state }));
  const seen = new Set();          // message_ids already shown (history + live overlap)
  const streams = new Map();       // ai message_id -> {item, text}: the bubble and the raw text so far
  const readings = new Map();      // client_id -> {username, data, timestamp, series}
  let joined = null;               // {username, room} once joined
  const HISTORY_PAGE = 50;
  let oldestSeq = null;            // the oldest message shown: the next page ends before it
  let historyDone = false;
  let loadingOlder = false;
  let unreadWhileHidden = 0;
  const baseTitle = document.title;
  const pending = new Map();       // client_message_id -> its "sending…" bubble

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // Text someone else chose: its own bidi isolate whose direction follows its first strong
  // letter (an RLO or a right-to-left name cannot reorder what is around it), marks capped.
  function userText(tag, className, text) {
    const node = el(tag, className ? className + " user-text" : "user-text", capMarks(text));
    node.dir = "auto";
    return node;
  }

  // The log reads new messages out (role="log", polite). What is not news is put in while
  // it is quiet: a join's history and older pages would otherwise be read out whole.
  let quietDepth = 0;
  function quietly(insert) {
    const log = $("log");
    quietDepth += 1;
    log.setAttribute("aria-live", "off");
    try {
      insert();
    } finally {
      // Screen readers look at the changes after the next frame: polite again after it.
      let done = false;
      const restore = () => {
        if (done) return;
        done = true;
        quietDepth -= 1;
        if (!quietDepth) log.setAttribute("aria-live", "polite");
      };
      requestAnimationFrame(() => setTimeout(restore, 0));
      setTimeout(restore, 1000);  // a hidden tab draws no frames
    }
  }

  function scrollToEnd() {
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
    $("new-marker").hidden = true;
  }

  function nearBottom() {
    const list = $("messages");
    return list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  }

  // New items go at the end; a reader scrolled up to older messages is not moved,
  // a "new messages" marker appears instead.
  function placeNew(node) {
    const follow = nearBottom();
    $("messages").appendChild(node);
    regroup(node);
    if (follow) scrollToEnd();
    else $("new-marker").hidden = false;
  }

  // "key: value", the key and the value each isolated (either may be right-to-left).
  function chip(data, key) {
    const node = el("span", "chip");
    node.append(userText("bdi", "chip-key", key), ": ", userText("bdi", "chip-value", shown(data, key)));
    return node;
  }

  function dataChips(data) {
    const chips = el("span", "chips");
    for (const key of Object.keys(data || {})) chips.appendChild(chip(data, key));
    return chips;
  }

  function messageNode(msg) {
    if (msg.type === "system_message") {  // a stored command record (PROTOCOL 11) reads as its event
      const line = el("li", "msg msg-system system-" + String(own(msg.data, "event") || "record"));
      line.appendChild(systemText({ message: msg.content, username: msg.username }));
      line.appendChild(timeNode(msg.timestamp));
      return line;
    }
    const kind = msg.type === "ai_response" ? "ai" : msg.source;
    const item = el("li", "msg msg-" + kind);
    item.dataset.seq = msg.seq;
    item.dataset.messageId = msg.message_id;
    item.dataset.sender = JSON.stringify([kind, msg.client_id || "", msg.username]);
    item.dataset.time = String(Date.parse(msg.timestamp) || 0);
    if (joined && msg.source === "web" && msg.username === joined.username) item.classList.add("own");
    const meta = el("div", "meta");
    meta.appendChild(userText("span", "who", msg.username));
    meta.appendChild(sourceTag(kind));
    meta.appendChild(timeNode(msg.timestamp));
    item.appendChild(meta);
    item.appendChild(userText("div", "text", msg.content));
    if (msg.data && Object.keys(msg.data).length) item.appendChild(dataChips(msg.data));
    return item;
  }

  function renderMessage(msg) {
    if (seen.has(msg.message_id)) return;
    rememberSeen(msg.message_id);
    noteRead(msg);
    const waiting = msg.client_message_id && pending.get(msg.client_message_id);
    if (waiting) {  // our own message came back: the real one replaces its "sending…" bubble
      pending.delete(msg.client_message_id);
      waiting.remove();
    }
    if (document.hidden) {
      unreadWhileHidden += 1;
      document.title = `(${unreadWhileHidden}) ${baseTitle}`;
    }
    const stream = streams.get(msg.message_id);
    if (stream) {  // the streamed bubble becomes the final reply, read out once, now
      const item = stream.item;
      streams.delete(msg.message_id);
      item.classList.remove("streaming");
      item.dataset.seq = msg.seq;
      item.dataset.time = String(Date.parse(msg.timestamp) || 0);
      item.querySelector(".meta").appendChild(timeNode(msg.timestamp));
      item.querySelector(".text").textContent = capMarks(msg.content);
      item.removeAttribute("aria-busy");
      return;
    }
    if (msg.data && Object.keys(msg.data).length) noteReading(msg);
    placeNew(messageNode(msg));
  }

  // The join's history: what this page has not shown yet, in order (after a reconnect, the
  // messages it missed), without unread counts or markers.
  function renderHistory(messages) {
    quietly(() => {
      for (const msg of messages) {
        if (seen.has(msg.message_id)) continue;
        rememberSeen(msg.message_id);
        noteRead(msg);
        if (msg.data && Object.keys(msg.data).length) noteReading(msg);
        const node = messageNode(msg);
        $("messages").appendChild(node);
        regroup(node);
      }
    });
  }

  // Older pages of history, fetched as the reader scrolls to the top (before_seq).
  function loadOlder() {
    if (!joined || loadingOlder || historyDone || oldestSeq === null) return;
    loadingOlder = true;
    const room = joined.room;
    const query = new URLSearchParams({ room: room, limit: String(HISTORY_PAGE), before_seq: String(oldestSeq) });
    fetch("/api/messages?" + query, { headers: authHeaders() })
      .then((response) => response.json())
      .then((body) => {
        if (!joined || joined.room !== room) return;  // switched meanwhile
        const older = (body.messages || []).filter((m) => !seen.has(m.message_id));
        if ((body.messages || []).length < HISTORY_PAGE) historyDone = true;
        if (!older.length) return;
        const list = $("messages");
        const before = list.scrollHeight;
        const formerFirst = list.firstElementChild;
        const nodes = older.map((m) => { rememberSeen(m.message_id); return messageNode(m); });
        quietly(() => list.prepend(...nodes));
        [...nodes, formerFirst].forEach(regroup);
        list.scrollTop += list.scrollHeight - before;  // the reader stays where they were
        oldestSeq = older[0].seq;
      })
      .catch(() => {})
      .finally(() => { loadingOlder = false; });
  }

  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 80) loadOlder();
    if (nearBottom()) $("new-marker").hidden = true;
  });
  $("new-marker").addEventListener("click", scrollToEnd);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      unreadWhileHidden = 0;
      document.title = baseTitle;
    }
  });

  // A system line names people ("Ana joined", "Ana is now Bo"): each name is isolated in it.
  function systemText(event) {
    const line = el("span", "text");
    const names = [event.previous, event.username].filter((name) => typeof name === "string" && name);
    let rest = String(event.message ?? "");
    for (;;) {
      const hits = names.map((name) => [rest.indexOf(name), name]).filter(([at]) => at >= 0)
        .sort((a, b) => a[0] - b[0] || b[1].length - a[1].length);  // the first, the longest there
      if (!hits.length) break;
      const [at, name] = hits[0];
      line.append(capMarks(rest.slice(0, at)), userText("bdi", "who-in-text", name));
      rest = rest.slice(at + name.length);
    }
    line.append(capMarks(rest));
    return line;
  }

  function renderSystem(event) {
    const item = el("li", "msg msg-system system-" + event.event);
    item.appendChild(systemText(event));
    item.appendChild(timeNode(event.timestamp));
    placeNew(item);
  }

  function renderStream(delta) {
    let stream = streams.get(delta.message_id);
    if (!stream) {
      if (seen.has(delta.message_id)) return;
      // Busy while it grows: screen readers read it once, when renderMessage completes it.
      const item = el("li", "msg msg-ai streaming");
      item.setAttribute("aria-busy", "true");
      item.dataset.sender = JSON.stringify(["ai", "", aiName]);
      item.dataset.time = String(Date.now());
      const meta = el("div", "meta");
      meta.appendChild(userText("span", "who", aiName));
      meta.appendChild(sourceTag("ai"));
      item.appendChild(meta);
      item.appendChild(userText("div", "text", ""));
      stream = { item: item, text: "" };
      streams.set(delta.message_id, stream);
      placeNew(item);
    }
    const follow = nearBottom();
    // The raw text grows and is capped as a whole: a run of marks may span deltas.
    stream.text += delta.delta;
    stream.item.querySelector(".text").textContent = capMarks(stream.text);
    if (follow) scrollToEnd();
  }

  function renderUsers(users) {
    const list = $("users");
    list.replaceChildren();
    for (const user of users) {
      const item = el("li", "user user-" + user.source);
      item.appendChild(userText("span", "who", user.username));
      const where = sourceTag(user.source);
      if (user.client_id) where.append(" · ", userText("bdi", "cid", user.client_id));  // ids are case-sensitive
      item.appendChild(where);
      if (joined && user.source === "web" && user.username === joined.username) item.classList.add("me");
      list.appendChild(item);
    }
    $("user-count").textContent = String(users.length);
  }

  // Device readings: the latest value of each key, with a sparkline of its recent
  // history (backfilled once from /api/readings, then extended live).
  const SPARK_POINTS = 50;
  // Bounds (PROTOCOL 9): a room full of strangers' devices must not grow the page forever
  // or make every open tab fetch once per invented key.
  const MAX_DEVICES = 50;       // the least recently heard device is dropped beyond this
  const MAX_KEYS = 8;           // sparklines per device
  const MAX_SEEN = 5000;        // message ids remembered to skip history/live overlaps
  const BACKFILLS_PER_MINUTE = 20;
  let backfillBudget = { start: Date.now(), used: 0 };

  function rememberSeen(id) {
    seen.add(id);
    if (seen.size > MAX_SEEN) seen.delete(seen.values().next().value);  // Sets keep insertion order
  }

  function noteReading(msg) {
    if (msg.type === "system_message") return;  // a command record's data is not a reading
    const id = msg.client_id || msg.username;
    let device = readings.get(id);
    if (device) readings.delete(id);  // re-inserted below: the Map's order is "least recently heard" first
    else device = { series: new Map() };
    readings.set(id, device);
    while (readings.size > MAX_DEVICES) readings.delete(readings.keys().next().value);
    Object.assign(device, { username: msg.username, data: msg.data, timestamp: msg.timestamp });
    for (const [key, value] of Object.entries(msg.data || {})) {  // own keys only
      if (typeof value !== "number") continue;
      let series = device.series.get(key);
      if (!series) {
        if (device.series.size >= MAX_KEYS) continue;
        series = { points: [], seqs: new Set() };
        device.series.set(key, series);
        if (msg.client_id) backfill(msg.client_id, key, series);
      }
      addPoint(series, msg.seq, value);
    }
    renderReadings();
  }

  function addPoint(series, seq, value) {
    if (series.seqs.has(seq)) return;
    series.seqs.add(seq);
    series.points.push({ seq: seq, value: value });
    series.points.sort((a, b) => a.seq - b.seq);
    if (series.points.length > SPARK_POINTS) {
      series.points.splice(0, series.points.length - SPARK_POINTS).forEach((p) => series.seqs.delete(p.seq));
    }
  }

  function backfill(clientId, key, series) {
    if (Date.now() - backfillBudget.start > 60000) backfillBudget = { start: Date.now(), used: 0 };
    if (backfillBudget.used >= BACKFILLS_PER_MINUTE) return;  // the live values still show
    backfillBudget.used += 1;
    const query = new URLSearchParams({ client_id: clientId, key: key, limit: String(SPARK_POINTS) });
    fetch("/api/readings?" + query, { headers: authHeaders() })
      .then((response) => response.json())
      .then((body) => {
        (body.readings || []).forEach((r) => { if (typeof r.value === "number") addPoint(series, r.seq, r.value); });
        renderReadings();
      })
      .catch(() => {});  // the live values still show
  }

  function renderReadings() {
    const list = $("readings");
    list.replaceChildren();
    for (const device of readings.values()) {
      const item = el("li", "reading");
      const head = el("div", "meta");
      head.appendChild(userText("span", "who", device.username));
      head.appendChild(timeNode(device.timestamp));
      item.appendChild(head);
      for (const key of Object.keys(device.data || {})) {
        const row = el("div", "reading-row");
        row.appendChild(chip(device.data, key));
        const series = device.series.get(key);
        if (series) row.appendChild(sparkline(key, series.points));
        item.appendChild(row);
      }
      list.appendChild(item);
    }
    $("no-readings").hidden = readings.size > 0;
  }

  function setBadge(id, text, ok) {
    const badge = $(id);
    badge.textContent = text;
    badge.className = "badge " + (ok ? "badge-on" : "badge-off");
  }

  function setConnection(text, ok) { setBadge("connection", text, ok); }

  // Is the MQTT side (the devices) reachable? /mqtt/status says 200 or 503.
  function refreshBridge() {
    fetch("/mqtt/status", { headers: authHeaders() })
      .then((response) => response.json())
      .then((body) => {
        const mqtt = body.mqtt_status || {};
        if (!mqtt.is_running) setBadge("bridge", "MQTT off", false);
        else setBadge("bridge", mqtt.is_connected ? "MQTT online" : "MQTT offline", mqtt.is_connected);
      })
      .catch(() => setBadge("bridge", "MQTT ?", false));
  }

  // moveFocus: the person joined or switched rooms; a reconnect's rejoin leaves focus (and an
  // open phone dialog) where they are.
  function showJoined(state, moveFocus) {
    joined = state;
    $("room-name").textContent = capMarks(state.room);
    $("join-form").hidden = true;
    $("send-form").hidden = false;
    $("leave").hidden = false;
    $("join-error").textContent = "";
    if (moveFocus) $("message").focus();
  }

  // Not in a room: the join form, focused, and nothing of the room left on screen.
  function showLeft() {
    joined = null;
    resetRoomPanels();
    $("room-name").textContent = "";
    $("send-form").hidden = true;
    $("send-error").textContent = "";
    $("leave").hidden = true;
    $("join-form").hidden = false;
    refreshRooms();
    $("username").focus();
  }

  // --- rooms: the list, unread counts (from each room's last seq), switching -------------
  const READ_KEY = "chat-last-read";  // room -> the highest seq this page has shown
  // A Map: a room may be called `constructor` or `__proto__`.
  const lastRead = new Map(Object.entries(JSON.parse(localStorage.getItem(READ_KEY) || "{}")));
  const readUpTo = (room) => (typeof lastRead.get(room) === "number" ? lastRead.get(room) : 0);

  function noteRead(msg) {
    if (!joined || msg.room !== joined.room || !(msg.seq > readUpTo(msg.room))) return;
    lastRead.set(msg.room, msg.seq);
    localStorage.setItem(READ_KEY, JSON.stringify(Object.fromEntries(lastRead)));
  }

  // Updated in place every 5 s: a room's button is the same element from one poll to the
  // next, so the keyboard focus (and a screen reader's place) stays on it.
  const roomItems = new Map();  // room -> {item, button, count, unread}

  function roomItem(room) {
    const item = el("li", "room");
    const button = el("button", "room-button");
    button.appendChild(userText("bdi", "room-label", room));
    button.type = "button";
    button.addEventListener("click", () => chooseRoom(room));
    const count = el("span", "count");
    const unread = el("span", "unread");
    item.append(button, count);  // the unread count joins them when there is one
    return { item: item, button: button, count: count, unread: unread };
  }

  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

  function renderRooms(rooms) {
    const list = $("rooms");
    const wanted = new Set(rooms.map((room) => room.room));
    for (const [name, entry] of roomItems) {
      if (!wanted.has(name)) { entry.item.remove(); roomItems.delete(name); }
    }
    rooms.forEach((room, index) => {
      let entry = roomItems.get(room.room);
      if (!entry) roomItems.set(room.room, (entry = roomItem(room.room)));
      const at = list.children[index] || null;
      if (at !== entry.item) list.insertBefore(entry.item, at);  // moving a node would drop its focus
      const current = Boolean(joined && room.room === joined.room);
      entry.item.classList.toggle("current", current);
      if (current) entry.button.setAttribute("aria-current", "true");
      else entry.button.removeAttribute("aria-current");
      setText(entry.count, room.members ? String(room.members) + " online" : "");
      const unread = current ? 0 : Math.max(0, room.last_seq - readUpTo(room.room));
      setText(entry.unread, String(unread));
      if (unread && !entry.unread.isConnected) entry.item.appendChild(entry.unread);
      else if (!unread) entry.unread.remove();
    });
  }

  // Other rooms' activity is polled (the socket only hears its own room). Before joining,
  // the room chosen in the form shows who is in it.
  function refreshRooms() {
    if (tokenRequired && !localStorage.getItem(TOKEN_KEY)) return;  // asked for first: no 401s to log
    fetch("/api/rooms", { headers: authHeaders() })
      .then((response) => response.json())
      .then((body) => renderRooms(body.rooms || []))
      .catch(() => {});
    if (joined) return;
    const room = $("room").value.trim() || "lobby";
    fetch("/api/users?" + new URLSearchParams({ room: room }), { headers: authHeaders() })
      .then((response) => response.json())
      .then((body) => { if (!joined && body.success) renderUsers(body.users || []); })
      .catch(() => {});
  }
  setInterval(refreshRooms, 5000);

  function switchRoom(room) {
    if (!joined || room === joined.room) return;
    join(joined.username, room, true);
  }

  // A room picked before joining fills the join form (and says who is there).
  function chooseRoom(room) {
    if (joined) {
      switchRoom(room);
      return;
    }
    $("room").value = room;
    panel.close(false);
    refreshRooms();
    ($("username").value.trim() ? $("join-form").querySelector("button[type=submit]") : $("username")).focus();
  }

  $("room-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const room = $("new-room").value.trim();
    if (!room) return;
    $("new-room").value = "";
    chooseRoom(room);
  });
  $("room").addEventListener("change", () => { if (!joined) refreshRooms(); });

  // Everything that belongs to one room starts afresh when the room changes.
  function resetRoomPanels() {
    $("messages").replaceChildren();
    seen.clear();
    streams.clear();
    readings.clear();
    renderReadings();
    oldestSeq = null;
    historyDone = false;
    $("new-marker").hidden = true;
  }

  // The page's stable identity (PROTOCOL 5): a reload or reconnect gets its name back,
  // and a message re-sent with the same client_message_id is posted once.
  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();  // secure contexts only
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  const pageId = localStorage.getItem("chat-client-id") || newId();
  localStorage.setItem("chat-client-id", pageId);

  // Messages typed but not yet acknowledged, oldest first; sent again after a rejoin.
  const unsent = [];

  function showUnsent() {
    $("send-error").textContent = unsent.length ? `${unsent.length} waiting to be sent…` : "";
  }

  function flushUnsent() {
    unsent.forEach((item) => {
      if (!socket.connected || !joined || item.inFlight) return;
      item.inFlight = true;
      socket.emit("send_message", { message: item.text, client_message_id: item.id }, (ack) => {
        item.inFlight = false;
        const index = unsent.indexOf(item);
        if (ack && (ack.ok || ack.code !== "not_joined") && index >= 0) unsent.splice(index, 1);
        showUnsent();
        if (ack && !ack.ok && ack.code !== "not_joined") {
          $("send-error").textContent = capMarks(ack.error || "not sent");
          const bubble = pending.get(item.id);  // refused: the bubble says so instead of "sending…"
          if (bubble) {
            bubble.classList.replace("pending", "refused");
            bubble.querySelector(".src").textContent = "not sent";
            bubble.removeAttribute("aria-busy");
            pending.delete(item.id);
          }
        }
      });
    });
    showUnsent();
  }

  // byPerson: a join or room change someone asked for (or a reload's rejoin), not a reconnect's.
  function join(username, room, byPerson) {
    $("join-error").textContent = "";
    socket.emit("join", { username: username, room: room, client_id: pageId }, (ack) => {
      if (!ack || !ack.ok) {
        const message = capMarks((ack && ack.error) || "could not join");  // it may quote the name
        if (joined && joined.room !== room) {  // a refused switch: still in the old room
          $("send-error").textContent = message;
          return;
        }
        $("join-error").textContent = message;
        joined = null;
        $("join-form").hidden = false;
        $("send-form").hidden = true;
        $("leave").hidden = true;
        return;
      }
      localStorage.setItem("chat-username", username);
      localStorage.setItem("chat-room", ack.room);
      const sameRoom = joined && joined.room === ack.room;
      joined = { username: ack.user.username, room: ack.room };
      if (!sameRoom) resetRoomPanels();
      renderHistory(ack.history);
      if (!sameRoom) {
        oldestSeq = ack.history.length ? ack.history[0].seq : null;
        historyDone = !ack.history.length;
        scrollToEnd();
      }
      renderUsers(ack.users);
      if (byPerson) panel.close(false);  // before the focus moves: the chat behind an open panel is inert
      showJoined(joined, byPerson);
      announceRoom(joined);
      refreshRooms();
      flushUnsent();
    });
  }

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    join($("username").value.trim(), $("room").value.trim() || "lobby", true);
  });

  $("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("message");
    const text = input.value;
    if (!text.trim()) return;
    if (window.chatCommands && window.chatCommands.fromComposer(text)) {  // `/cmd …`: static/commands.js
      input.value = "";
      return;
    }
    // Queued first: a socket that is down (or drops before the ack) sends it after the rejoin.
    const id = newId();
    unsent.push({ text: text, id: id, inFlight: false });
    const bubble = el("li", "msg msg-web own pending");
    const meta = el("div", "meta");
    meta.appendChild(userText("span", "who", joined ? joined.username : ""));
    meta.appendChild(el("span", "src", "sending…"));
    bubble.appendChild(meta);
    bubble.appendChild(userText("div", "text", text));
    pending.set(id, bubble);
    bubble.setAttribute("aria-busy", "true");  // read out once: the room's copy replaces it
    $("messages").appendChild(bubble);
    scrollToEnd();
    input.value = "";
    flushUnsent();
  });

  // Leaving is decided at once: a reconnect in between must not rejoin (joined and the
  // remembered name are cleared before anything is sent). Disconnected, there is no one to
  // tell: the server dropped the membership with the socket.
  $("leave").addEventListener("click", () => {
    localStorage.removeItem("chat-username");
    if (!socket.connected) {
      showLeft();
      announceRoom(null);
      return;
    }
    joined = null;
    socket.emit("leave", {}, () => {
      showLeft();
      announceRoom(null);
    });
  });

  socket.on("connect", () => {
    setConnection("connected", true);
    refreshBridge();
    // After a server restart or network blip, rejoin with the same name (then send what waits);
    // after a reload, rejoin with the remembered name and room without asking.
    if (joined) join(joined.username, joined.room, false);
    else if (!$("leave").hidden) {  // a Leave whose answer the drop swallowed: left all the same
      showLeft();
      announceRoom(null);
    } else if (localStorage.getItem("chat-username")) {
      join(localStorage.getItem("chat-username"), localStorage.getItem("chat-room") || "lobby", true);
    }
  });
  // A refused connection (wrong or missing token) asks for the token, then retries.
  // The join form waits behind the prompt: joining cannot work before the token does.
  function askForToken(asking) {
    $("token-form").hidden = !asking;
    $("join-form").hidden = asking || joined !== null;
  }
  socket.on("connect_error", (error) => {
    if (!error || error.message !== "unauthorized") return;
    setConnection("token needed", false);
    askForToken(true);
    $("token").focus();
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    askForToken(false);
    socket.connect();
  });
  if (tokenRequired && !localStorage.getItem(TOKEN_KEY)) askForToken(true);

  socket.on("disconnect", () => {
    setConnection("reconnecting…", false);
    unsent.forEach((item) => { item.inFlight = false; });  // their acks will never come
  });
  socket.on("chat_message", renderMessage);
  socket.on("system_message", (event) => {
    // A stored record (a command's, PROTOCOL 11) carries its message_id: shown once (a rejoin's
    // history has it too) and counted read like a message.
    if (typeof event.message_id === "string") {
      if (seen.has(event.message_id)) return;
      rememberSeen(event.message_id);
      noteRead(event);
    }
    renderSystem(event);
    if (event.event === "bridge_online") setBadge("bridge", "MQTT online", true);
    if (event.event === "bridge_offline") setBadge("bridge", "MQTT offline", false);
  });
  socket.on("user_list", (payload) => renderUsers(payload.users));
  socket.on("ai_stream", renderStream);

  $("username").value = localStorage.getItem("chat-username") || "";
  $("room").value = localStorage.getItem("chat-room") || "lobby";
  refreshRooms();  // the rooms and who is in them, before anyone joins
})();
