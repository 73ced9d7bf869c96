// Commands and requests for nodejs_client.js (PROTOCOL 11); keep it next to that file.
// The same behaviour as device_commands.py:
// - a device declares its commands in its join and, with --on-command HANDLER, runs HANDLER
//   for each command on P/devices/<id>/commands, then answers on P/devices/<id>/commands/ack;
// - --command DEVICE COMMAND VALUE asks the server over HTTP to command a device;
// - --history-since SEQ asks on P/devices/<id>/requests and prints what comes on .../responses.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const { execFile } = require("child_process");

const COMMAND_TYPES = ["bool", "number", "enum", "text"];
const MAX_COMMANDS = 16;  // the contract's bound
const HANDLER_SECONDS = 8;  // under the server's default command timeout (10 s)
const MAX_RESULT_BYTES = 1024;  // the server's bound on an ack's result (as JSON)
const MAX_ERROR_CHARS = 256;  // ... and on its error text
const STALE_SECONDS = 60;  // a command queued that long (a broker's persistent session) is not done
const MAX_WAITING = 16;  // commands queued behind a running handler; more are answered "busy"
const REMEMBERED_ACKS = 64;  // a QoS 1 redelivery gets the same ack, the handler does not run twice
const HISTORY_PAGE = 100;  // the most one request may ask for
// Requests spend the device's RATE_LIMIT bucket (20 per 10 s by default, so 2 000 messages at
// once): a rate_limited page is asked again after a pause, this many times in a row at most.
const RATE_LIMITED_RETRIES = 30;
const RATE_LIMITED_PAUSE_MS = 1000;

// The level the server gives this client_id under P/devices/ (docs/PROTOCOL.md): the id
// itself when it is letters, digits, _ and -, else a slug, "~" and 8 hex digits of its SHA-1
// (a plain id cannot hold "~", so it is never another id's level).
function topicId(clientId) {
  if (/^[A-Za-z0-9_-]{1,64}$/.test(clientId)) return clientId;
  const slug = clientId.replace(/[^A-Za-z0-9_-]+/g, "_").replace(/^_+|_+$/g, "").slice(0, 48) || "device";
  return `${slug}~${crypto.createHash("sha1").update(clientId, "utf8").digest("hex").slice(0, 8)}`;
}

const isPrintable = (text) => !/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u.test(text);

const COMMAND_NAME = /^[A-Za-z0-9_.-]{1,32}$/;  // a topic level for Home Assistant, a word in /cmd
const SPEC_KEYS = { bool: [], number: ["min", "max", "step"], enum: ["options"], text: ["max"] };
const isNumber = (value) => typeof value === "number" && isFinite(value);

// --commands JSON -> the declaration sent in the join; throws an Error saying what is wrong.
// The server's rules (docs/PROTOCOL.md), checked here so a typo is not a silent bad_field.
function parseDeclaration(text) {
  let declared;
  try { declared = JSON.parse(text); } catch (e) { throw new Error(`--commands is not JSON: ${e.message}`); }
  const names = declared && typeof declared === "object" && !Array.isArray(declared) ? Object.keys(declared) : [];
  if (names.length < 1 || names.length > MAX_COMMANDS) {
    throw new Error(`--commands must be an object of 1-${MAX_COMMANDS} commands, like {"led": {"type": "bool"}}`);
  }
  for (const name of names) {
    const spec = declared[name];
    const label = `command ${JSON.stringify(name)}`;
    if (!COMMAND_NAME.test(name)) throw new Error(`${label}: 1-32 letters, digits, '_', '-' or '.'`);
    if (!spec || typeof spec !== "object" || !COMMAND_TYPES.includes(spec.type)) {
      throw new Error(`${label} needs a type: one of ${COMMAND_TYPES.join(", ")}`);
    }
    const extra = Object.keys(spec).filter((key) => key !== "type" && !SPEC_KEYS[spec.type].includes(key));
    if (extra.length) throw new Error(`${label}: a ${spec.type} takes no ${extra.sort().join(", ")}`);
    const problem = specProblem(spec);
    if (problem) throw new Error(`${label}: ${problem}`);
  }
  return declared;
}

function specProblem(spec) {
  if (spec.type === "number") {
    if (["min", "max", "step"].some((bound) => bound in spec && !isNumber(spec[bound]))) return "min, max and step must be numbers";
    if ("min" in spec && "max" in spec && spec.min > spec.max) return "min is above max";
    if ("step" in spec && spec.step <= 0) return "step must be above 0";
  }
  if (spec.type === "enum") {
    const options = spec.options;
    if (!(Array.isArray(options) && options.length >= 1 && options.length <= 16 && new Set(options).size === options.length
          && options.every((o) => typeof o === "string" && [...o].length >= 1 && [...o].length <= 64 && isPrintable(o)))) {
      return "options must be 1-16 different texts of 1-64 printable characters";
    }
  }
  if (spec.type === "text" && "max" in spec && !(Number.isInteger(spec.max) && spec.max >= 1 && spec.max <= 255)) {
    return "max must be a whole number from 1 to 255";
  }
  return null;
}

// Why `value` does not fit the declared command `spec` (null when it does).
function valueProblem(spec, value) {
  if (spec.type === "bool") return typeof value === "boolean" ? null : "expects true or false";
  if (spec.type === "number") {
    if (!isNumber(value)) return "expects a number";
    if (("min" in spec && value < spec.min) || ("max" in spec && value > spec.max)) {
      return `expects a number from ${"min" in spec ? spec.min : "-inf"} to ${"max" in spec ? spec.max : "inf"}`;
    }
    return null;
  }
  if (spec.type === "enum") return (spec.options || []).includes(value) ? null : `expects one of ${(spec.options || []).join(", ")}`;
  const max = "max" in spec ? spec.max : 255;
  return typeof value === "string" && [...value].length <= max && isPrintable(value) ? null
    : `expects text of at most ${max} printable characters`;
}

// A command older than STALE_SECONDS: a broker kept it while we were away, and a heater must
// not switch on hours later. No or an unreadable timestamp: not stale.
function isStale(command, now = Date.now()) {
  const sent = Date.parse(command.timestamp);
  return !isNaN(sent) && now - sent > STALE_SECONDS * 1000;
}

// A command-line value: JSON when it is JSON (true, 21.5, "42"), else the text itself.
function parseValue(text) {
  try { return JSON.parse(text); } catch (e) { return text; }
}

// Why `handler` cannot be run as a program (null when it can).
function handlerProblem(handler) {
  try {
    if (!fs.statSync(handler).isFile()) return `--on-command ${JSON.stringify(handler)}: no such file`;
    fs.accessSync(handler, fs.constants.X_OK);
  } catch (e) {
    return e.code === "ENOENT" ? `--on-command ${JSON.stringify(handler)}: no such file`
      : `--on-command ${JSON.stringify(handler)} is not executable (chmod +x, with a #! line)`;
  }
  return null;
}

function stamp() {
  const now = new Date();
  return [now.getHours(), now.getMinutes(), now.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}

// Runs the handler for each command, one at a time, and hands each ack to publishAck.
class CommandRunner {
  constructor(handler, declared, publishAck, safe) {
    Object.assign(this, { handler, declared, publishAck, safe });
    this.acks = new Map();  // command_id -> its ack (null: running), oldest first
    this.waiting = 0;
    this.queue = Promise.resolve();
  }

  // One publication on the commands topic.
  submit(payload) {
    let command;
    try { command = JSON.parse(payload.toString("utf8")); } catch (e) { command = null; }
    if (!command || typeof command !== "object" || typeof command.command_id !== "string") {
      this.say("ignored a command without a command_id (nothing to answer)");
      return;
    }
    if (this.acks.has(command.command_id)) {  // a redelivery: the same answer; the handler runs once
      const done = this.acks.get(command.command_id);
      if (done) this.publishAck(done);
      return;
    }
    this.remember(command.command_id, null);
    if (this.waiting >= MAX_WAITING) {
      this.finish(command, { command_id: command.command_id, ok: false, error: "busy: too many commands waiting" });
      return;
    }
    this.waiting++;
    this.queue = this.queue.then(() => this.run(command))
      .catch((err) => ({ command_id: command.command_id, ok: false, error: `handler failed: ${err.message}` }))
      .then((ack) => {
        this.waiting--;
        // The server takes at most 256 printable characters (else it refuses the ack).
        if (!ack.ok) ack.error = this.safe(String(ack.error)).slice(0, MAX_ERROR_CHARS);
        this.finish(command, ack);
      });
  }

  // The ack for one command: checked against the declaration, then the handler's verdict.
  run(command) {
    const base = { command_id: command.command_id };
    const { command: name, value } = command;
    const spec = typeof name === "string" && Object.prototype.hasOwnProperty.call(this.declared, name) ? this.declared[name] : null;
    if (!spec) return Promise.resolve({ ...base, ok: false, error: `unknown command ${JSON.stringify(name)}` });
    const problem = valueProblem(spec, value);
    if (problem) return Promise.resolve({ ...base, ok: false, error: `${name} ${problem}` });
    if (isStale(command)) return Promise.resolve({ ...base, ok: false, error: `not done: sent more than ${STALE_SECONDS} s ago` });
    return new Promise((resolve) => {
      const child = execFile(this.handler, [name, JSON.stringify(value)],
        { timeout: HANDLER_SECONDS * 1000, maxBuffer: 1 << 20, encoding: "utf8" }, (err, stdout, stderr) => {
          const out = String(stdout).trim();
          if (err && typeof err.code === "number") {
            const lines = String(stderr).trim().split("\n").filter(Boolean);
            resolve({ ...base, ok: false, error: lines.pop() || `handler exited with status ${err.code}` });
          } else if (err && err.killed) {
            resolve({ ...base, ok: false, error: `handler took longer than ${HANDLER_SECONDS} s` });
          } else if (err) {
            resolve({ ...base, ok: false, error: `handler could not run: ${err.message}` });
          } else {
            // stdout is the result: JSON when it is JSON, else its text; nothing printed means
            // "done", and the result is the value it was given.
            const result = out ? parseValue(out) : value;
            resolve(Buffer.byteLength(JSON.stringify(result)) > MAX_RESULT_BYTES
              ? { ...base, ok: false, error: `handler answer over ${MAX_RESULT_BYTES} bytes` }
              : { ...base, ok: true, result });
          }
        });
      child.stdin.on("error", () => {});  // a handler that does not read its stdin
      child.stdin.end(JSON.stringify(command));
    });
  }

  remember(commandId, ack) {
    this.acks.delete(commandId);
    this.acks.set(commandId, ack);
    while (this.acks.size > REMEMBERED_ACKS) this.acks.delete(this.acks.keys().next().value);
  }

  finish(command, ack) {
    this.remember(command.command_id, ack);
    this.publishAck(ack);
    const verdict = ack.ok ? `ok ${JSON.stringify(ack.result)}` : `error: ${ack.error}`;
    this.say(`command ${command.command} = ${JSON.stringify(command.value)} from ${command.from || "?"}: ${verdict}`);
  }

  say(text) { console.log(`[${stamp()}] ${this.safe(text)}`); }
}

// --command: prints the server's answer (one JSON line); resolves to the exit status:
// 0 the device did it, 1 it refused or the server did, 3 no answer in time.
// `username` is who asks, as the room's audit trail shows it.
async function runCommand(server, token, username, device, command, valueText, timeout) {
  const url = `${server.replace(/\/+$/, "")}/api/devices/${encodeURIComponent(device)}/commands`;
  let response, body;
  try {
    response = await fetch(url, {
      method: "POST", signal: AbortSignal.timeout((timeout + 10) * 1000),
      headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify({ command, value: parseValue(valueText), timeout, username }),
    });
    body = await response.json().catch(() => ({}));
  } catch (e) {
    console.error(`cannot reach the chat server at ${server}: ${e.cause ? e.cause.message : e.message}`);
    return 1;
  }
  if (response.status === 200) {
    console.log(JSON.stringify(body));
    if (body.ok === true) return 0;
    console.error(`! ${device} answered: ${body.error}`);
    return 1;
  }
  if (response.status === 504) {
    console.error(`! no answer from ${device} within ${timeout} s (timeout)`);
    return 3;
  }
  console.error(`! refused (${body.code || response.status}): ${body.error}`);
  return 1;
}

// --history-since: pages through the room's messages after afterSeq (100 per request) up to the
// answer's last_seq; resolves to 0 done, 1 refused, 3 no answer. request(body) resolves to the answer or null.
async function printHistory(request, room, afterSeq, formatEvent) {
  let printed = 0;
  let retries = 0;
  for (;;) {
    const answer = await request({ request: "history", room, after_seq: afterSeq, limit: HISTORY_PAGE });
    if (answer !== null && answer.code === "rate_limited" && retries < RATE_LIMITED_RETRIES) {
      retries++;
      await new Promise((resolve) => setTimeout(resolve, RATE_LIMITED_PAUSE_MS));  // the bucket refills
      continue;
    }
    retries = 0;
    if (answer === null) {
      console.error("no answer from the chat server in time (is it running, bridged to this broker, and does it answer requests?)");
      return 3;
    }
    if (answer.ok !== true) {
      console.error(`! request refused (${answer.code}): ${answer.error}`);
      return 1;
    }
    const result = answer.result && typeof answer.result === "object" ? answer.result : {};
    const messages = (Array.isArray(result.messages) ? result.messages : []).filter((m) => m && typeof m === "object");
    const seqs = messages.map((m) => m.seq).filter(Number.isInteger);
    if (!seqs.length || Math.max(...seqs) <= afterSeq) break;
    for (const message of messages) console.log(formatEvent(message));
    printed += messages.length;
    afterSeq = Math.max(...seqs);
    if (Number.isInteger(result.last_seq) && afterSeq >= result.last_seq) break;  // the newest: no empty page needed
  }
  console.error(`${printed} messages; the last seq is ${afterSeq} (next time: --history-since ${afterSeq})`);
  return 0;
}

module.exports = { CommandRunner, handlerProblem, isStale, parseDeclaration, parseValue, printHistory, runCommand, topicId,
                   valueProblem };
