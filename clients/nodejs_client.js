#!/usr/bin/env node
// Chat room client over MQTT (npm "mqtt"): join, talk, listen.
//
//   node clients/nodejs_client.js --broker localhost --name Alice        # interactive
//   node clients/nodejs_client.js --name cron --send "backup done"       # send once, exit 0
//   node clients/nodejs_client.js --listen                               # print the room
//   node clients/nodejs_client.js --username esp-a --password s3cret --send "hi"   # a broker login
//   node clients/nodejs_client.js --client-id lamp-1 --commands '{"led":{"type":"bool"}}' --on-command ./led.sh
//   node clients/nodejs_client.js --server http://localhost:5000 --command lamp-1 led true
//   node clients/nodejs_client.js --client-id lamp-1 --history-since 120
//
// Same flags as clients/python_client.py. It publishes on its own device topics
// (PROTOCOL 10: messages/in/<client_id>, users/join/<client_id>, users/leave/<client_id>),
// which a broker ACL can bind to its login; --shared-topics uses messages/in, users/join,
// users/leave instead (servers older than device topics). With --username and no
// --client-id, the login is the client_id. It joins on (every) connect and every
// --heartbeat seconds (so a listener stays present), leaves on exit, and sets a
// will on its users/leave topic so the room sees it go if it drops. --send waits for the
// room to confirm. Exit status: 0 done, 1 the server rejected something we sent
// (or no broker, or the broker refused our login), 2 bad arguments, 3 no confirmation.
// Room text is printed with control characters escaped. Commands and requests (PROTOCOL 11:
// --on-command, --command, --history-since) are in device_commands.js, next to this file.
"use strict";

const mqtt = require("mqtt");
const os = require("os");
const readline = require("readline");
const crypto = require("crypto");
const commands = require("./device_commands");

const HEARTBEAT_SECONDS = 200;  // the server's MQTT_USER_TIMEOUT (600 s) / 3
const CONFIRM_SECONDS = 10;

const HELP = `usage: nodejs_client.js [--broker HOST] [--port N] [--name NAME] [--client-id ID]
                        [--room ROOM] [--prefix PREFIX] [--send TEXT] [--listen]
                        [--heartbeat SECONDS] [--username USERNAME] [--password PASSWORD]
                        [--shared-topics] [--on-command HANDLER --commands JSON]
                        [--command DEVICE COMMAND VALUE] [--history-since SEQ]
                        [--server URL] [--token TOKEN] [--timeout SECONDS]

Chat room client over MQTT.

  --broker HOST     MQTT broker host (default localhost)
  --port N          MQTT broker port (default 1883)
  --name NAME       display name
  --client-id ID    MQTT client id, your identity in the room
                    (default: --username, else js-<random>)
  --room ROOM       room (default lobby)
  --prefix PREFIX   topic prefix (default chatroom)
  --send TEXT       join, send TEXT once, leave and exit
  --listen          print room messages until Ctrl-C
  --heartbeat SECONDS  re-send join every SECONDS so the server keeps us present
                    (default ${HEARTBEAT_SECONDS}; 0 = off)
  --username USERNAME  broker login (default: $MQTT_USERNAME); also the default client id
  --password PASSWORD  broker password (default: $MQTT_PASSWORD, which keeps it out of \`ps\`)
  --shared-topics   publish on the shared messages/in, users/join, users/leave topics with
                    the client id in the payload (servers older than device topics),
                    instead of messages/in/<client_id>, ...
  --help            this text

commands and requests (PROTOCOL 11):
  --on-command HANDLER  be a device: declare --commands in the join and run the program
                    HANDLER for each command (argv: COMMAND VALUE-as-JSON; stdin: the
                    command JSON); its exit status and output are the ack
  --commands JSON   the commands this device declares, e.g. '{"led": {"type": "bool"}}'
                    (types bool, number with min/max, enum with options, text)
  --command DEVICE COMMAND VALUE  ask the chat server (--server, HTTP) to send COMMAND
                    with VALUE (JSON, or else text) to the device DEVICE; print its answer
  --history-since SEQ  ask the server over MQTT for the room's messages after SEQ,
                    print them, exit
  --server URL      the chat server for --command (default: $CHATROOM_URL, else
                    http://localhost:5000)
  --token TOKEN     the server's API_TOKEN for --command (default: $API_TOKEN)
  --timeout SECONDS how long --command and --history-since wait for an answer (default 10)`;

// Why clientId cannot be the last level of a device topic (null when it can).
function topicLevelProblem(clientId) {
  if (!clientId) return "an empty client id cannot be a topic level";
  const bad = [...new Set([...clientId].filter((c) => "/+#".includes(c)))].sort();
  if (bad.length) {
    return `client id ${JSON.stringify(clientId)} cannot be a topic level (it contains ${bad.join(" ")}); `
      + "choose one without '/', '+' or '#', or use --shared-topics";
  }
  return null;
}

function parseArgs(argv) {
  const args = { broker: "localhost", port: 1883, name: ("js-" + os.hostname()).slice(0, 32),
                 clientId: null, room: "lobby", prefix: "chatroom", send: null, listen: false,
                 heartbeat: HEARTBEAT_SECONDS, username: process.env.MQTT_USERNAME || null,
                 password: process.env.MQTT_PASSWORD || null, sharedTopics: false,
                 onCommand: null, commands: null, command: null, historySince: null,
                 server: process.env.CHATROOM_URL || "http://localhost:5000", token: process.env.API_TOKEN || null,
                 timeout: 10 };
  const valued = { "--broker": "broker", "--port": "port", "--name": "name", "--client-id": "clientId",
                   "--room": "room", "--prefix": "prefix", "--send": "send", "--heartbeat": "heartbeat",
                   "--username": "username", "--password": "password", "--on-command": "onCommand",
                   "--commands": "commands", "--history-since": "historySince", "--server": "server",
                   "--token": "token", "--timeout": "timeout" };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--help" || flag === "-h") { console.log(HELP); process.exit(0); }
    else if (flag === "--listen") args.listen = true;
    else if (flag === "--shared-topics") args.sharedTopics = true;
    else if (flag === "--command" && i + 3 < argv.length) { args.command = argv.slice(i + 1, i + 4); i += 3; }
    else if (valued[flag] && i + 1 < argv.length) args[valued[flag]] = argv[++i];
    else { console.error(`unknown or incomplete argument: ${flag}\n\n${HELP}`); process.exit(2); }
  }
  args.port = Number(args.port);
  args.heartbeat = Number(args.heartbeat);
  checkCommandArgs(args);
  if (args.clientId === null) args.clientId = args.username || "js-" + crypto.randomBytes(4).toString("hex");
  return args;
}

// The combinations that make no sense end with exit 2 and a clear message.
function checkCommandArgs(args) {
  const fail = (why) => { console.error(`${why}\n\n${HELP}`); process.exit(2); };
  const modes = [["--send", args.send], ["--command", args.command], ["--history-since", args.historySince !== null],
                 ["--on-command", args.onCommand]].filter(([, on]) => on).map(([flag]) => flag);
  if (modes.length > 1) fail(`${modes.join(" and ")} cannot be combined`);
  if (!args.onCommand !== !args.commands) fail("--on-command HANDLER and --commands JSON go together");
  if (args.commands) {
    try { args.commands = commands.parseDeclaration(args.commands); } catch (e) { fail(e.message); }
    if (commands.handlerProblem(args.onCommand)) fail(commands.handlerProblem(args.onCommand));
  }
  if (args.historySince !== null) {
    args.historySince = Number(args.historySince);
    if (!Number.isInteger(args.historySince) || args.historySince < 0) fail("--history-since needs a seq of 0 or more");
  }
  args.timeout = Number(args.timeout);
  if (!(args.timeout > 0 && args.timeout <= 120)) fail("--timeout must be more than 0 and at most 120 seconds");
}

// With a clientId (device topics, PROTOCOL 10) the inbound topics end in it, so a broker
// ACL can bind them to our login; without one they are the shared topics.
function topicsFor(prefix, room, clientId = null) {
  const base = room === "lobby" ? prefix : `${prefix}/${room}`;
  const own = clientId === null ? "" : `/${clientId}`;
  return { in: `${base}/messages/in${own}`, out: `${base}/messages/out`, join: `${base}/users/join${own}`,
           leave: `${base}/users/leave${own}`, system: `${base}/system`, errors: `${prefix}/errors` };
}

// PROTOCOL 11: commands for us, our acks, our requests and their answers.
function deviceTopicsFor(prefix, clientId) {
  const own = `${prefix}/devices/${commands.topicId(clientId)}`;
  return { commands: `${own}/commands`, ack: `${own}/commands/ack`, requests: `${own}/requests`,
           responses: `${own}/responses` };
}

function pad(n) { return String(n).padStart(2, "0"); }

// Room text for a terminal: control and format characters escaped, so no escape
// sequence or bidi override from the room reaches the screen.
function safe(text) {
  return String(text).replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (c) => {
    const code = c.codePointAt(0);
    return code <= 0xff ? "\\x" + code.toString(16).padStart(2, "0")
      : code <= 0xffff ? "\\u" + code.toString(16).padStart(4, "0") : "\\U" + code.toString(16).padStart(8, "0");
  });
}

// `[HH:MM:SS] user: text` for messages, `[HH:MM:SS] * text` for system events.
function formatEvent(event) {
  const date = new Date(event.timestamp);
  const when = isNaN(date) ? new Date() : date;
  const stamp = `${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}`;
  // A live event says it in `message`; a stored one (a command's audit record, on messages/out
  // and in history) in `content`.
  if (event.type === "system_message") return `[${stamp}] * ${safe(event.message || event.content || "")}`;
  const readings = event.data && typeof event.data === "object"
    ? "  (" + Object.entries(event.data).map(([k, v]) => `${safe(k)}=${safe(v)}`).join(", ") + ")" : "";
  return `[${stamp}] ${safe(event.username)}: ${safe(event.content)}${readings}`;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.command) {  // HTTP only: no broker needed
    process.exit(await commands.runCommand(args.server, args.token, args.name, ...args.command, args.timeout));
  }
  if (!args.sharedTopics && topicLevelProblem(args.clientId)) {
    console.error(topicLevelProblem(args.clientId));
    process.exit(2);
  }
  if (!args.sharedTopics && args.username && args.clientId !== args.username) {
    console.error(`note: a broker that binds logins to device topics (clients/mosquitto/acl.example) lets `
      + `user ${JSON.stringify(args.username)} publish only as client id ${JSON.stringify(args.username)}, `
      + `not ${JSON.stringify(args.clientId)}`);
  }
  const topics = topicsFor(args.prefix, args.room, args.sharedTopics ? null : args.clientId);
  const own = deviceTopicsFor(args.prefix, args.clientId);
  const asking = args.historySince !== null;  // only asks: never joins, so no will either
  const listen = args.listen || !(args.send || args.onCommand || asking);
  const client = mqtt.connect({
    host: args.broker, port: args.port, clientId: args.clientId, clean: true, reconnectPeriod: 2000,
    connectTimeout: 15000,
    ...(args.username ? { username: args.username, password: args.password || undefined } : {}),
    ...(asking ? {} : { will: { topic: topics.leave, payload: JSON.stringify({ client_id: args.clientId }), qos: 1, retain: false } }),
  });
  let joined = false;
  let closing = false;
  let rejected = false;
  const pending = new Map();  // our message_id -> resolve(true) once seen on messages/out
  const answers = new Map();  // our request_id -> resolve(answer)
  const runner = args.onCommand ? new commands.CommandRunner(args.onCommand, args.commands,
    (ack) => publish(own.ack, ack).catch(() => {}), safe) : null;

  const publish = (topic, body) => new Promise((resolve, reject) =>
    client.publish(topic, JSON.stringify(body), { qos: 1 }, (err) => (err ? reject(err) : resolve())));

  const say = (text) => publish(topics.in, { client_id: args.clientId, username: args.name, message: text,
                                            message_id: crypto.randomUUID() });

  // Resolves true when the room published it, false when the server rejected it, null on timeout.
  const sayConfirmed = async (text) => {
    const messageId = crypto.randomUUID();
    const verdict = new Promise((resolve) => {
      pending.set(messageId, resolve);
      setTimeout(() => resolve(null), CONFIRM_SECONDS * 1000);
    });
    await publish(topics.in, { client_id: args.clientId, username: args.name, message: text, message_id: messageId });
    return verdict;
  };

  // Declared again with every join and heartbeat.
  const join = () => publish(topics.join, { client_id: args.clientId, username: args.name,
                                            ...(args.commands ? { commands: args.commands } : {}) });
  // Asks on our requests topic; resolves to the answer with the same request_id, or null.
  const request = (body) => new Promise((resolve) => {
    const requestId = crypto.randomUUID();
    const timer = setTimeout(() => { answers.delete(requestId); resolve(null); }, args.timeout * 1000);
    answers.set(requestId, (answer) => { clearTimeout(timer); answers.delete(requestId); resolve(answer); });
    publish(own.requests, { request_id: requestId, ...body }).catch(() => {});
  });
  if (args.heartbeat > 0 && !asking) {
    // The server counts a repeated join as a sign of life and says nothing about it.
    setInterval(() => { if (client.connected && !closing) join().catch(() => {}); }, args.heartbeat * 1000).unref();
  }

  const leaveAndExit = async (code) => {
    if (closing) return;
    closing = true;
    if (rejected) code = 1;
    try { if (client.connected && !asking) await publish(topics.leave, { client_id: args.clientId }); } catch (e) { /* gone */ }
    client.end(false, {}, () => process.exit(code));
  };

  const giveUp = setTimeout(() => {
    if (!joined) { console.error(`cannot reach the broker at ${args.broker}:${args.port}`); process.exit(1); }
  }, 15000);

  client.on("connect", async () => {
    if (asking) {
      // Subscribed to our answers (the SUBACK came) before the first request goes.
      client.subscribe({ [topics.errors]: { qos: 1 }, [own.responses]: { qos: 1 } }, async (err) => {
        if (joined) return;
        joined = true;
        clearTimeout(giveUp);
        await leaveAndExit(err ? 1 : await commands.printHistory(request, args.room, args.historySince, formatEvent));
      });
      return;
    }
    // messages/out always: it is how --send learns that the room took the message.
    const subs = { [topics.errors]: { qos: 1 }, [topics.out]: { qos: 1 } };
    if (listen) subs[topics.system] = { qos: 1 };
    if (runner) subs[own.commands] = { qos: 1 };
    client.subscribe(subs);  // before the join: no command or answer can pass us by
    await join();  // again on every reconnect
    if (joined) return;
    joined = true;
    clearTimeout(giveUp);
    if (args.send) {
      const verdict = await sayConfirmed(args.send);
      if (verdict === null) {
        console.error(`no confirmation from the chat server within ${CONFIRM_SECONDS} s (is it running and bridged to this broker?)`);
      }
      await leaveAndExit(verdict === null ? 3 : verdict ? 0 : 1);
    } else if (!args.listen && !runner) {
      console.error(`joined ${args.room} as ${args.name}; type to send, Ctrl-D to leave`);
      const input = readline.createInterface({ input: process.stdin });
      input.on("line", (line) => { if (line.trim()) say(line.trim()); });
      input.on("close", () => leaveAndExit(0));
    }
  });

  client.on("message", (topic, payload) => {
    if (runner && topic === own.commands) { runner.submit(payload); return; }
    let event;
    try { event = JSON.parse(payload.toString("utf8")); } catch (e) { return; }
    if (!event || typeof event !== "object") return;
    if (topic === own.responses) {
      if (answers.has(event.request_id)) answers.get(event.request_id)(event);
      return;
    }
    if (topic === topics.errors) {
      if (event.client_id === args.clientId) {
        console.error(`! rejected (${safe(event.code)}): ${safe(event.error)}`);
        rejected = true;
        for (const resolve of pending.values()) resolve(false);
      }
      return;
    }
    if (event.client_id === args.clientId && pending.has(event.client_message_id)) {
      pending.get(event.client_message_id)(true);
    }
    if (listen) console.log(formatEvent(event));
  });
  client.on("error", (err) => {
    console.error(`mqtt error: ${err.message}`);
    // CONNACK 4 (bad user name or password) or 5 (not authorized): retrying will not help.
    if (!joined && (err.code === 4 || err.code === 5)) {
      console.error(`the broker at ${args.broker}:${args.port} refused the connection (check --username/--password)`);
      client.end(true, {}, () => process.exit(1));
    }
  });
  client.on("offline", () => { if (joined && !closing) console.error("connection lost; reconnecting"); });
  process.on("SIGINT", () => leaveAndExit(0));
  process.on("SIGTERM", () => leaveAndExit(0));
}

if (require.main === module) main();
module.exports = { deviceTopicsFor, formatEvent, parseArgs, safe, topicLevelProblem, topicsFor };
