#!/usr/bin/env node
// Chat room client over MQTT (npm "mqtt"): join, talk, listen.
//
//   node clients/nodejs_client.js --broker localhost --name Alice        # interactive
//   node clients/nodejs_client.js --name cron --send "backup done"       # send once, exit 0
//   node clients/nodejs_client.js --listen                               # print the room
//
// Same flags as clients/python_client.py. It joins on (every) connect, leaves on
// exit, and sets a will on users/leave so the room sees it go if it drops.
"use strict";

const mqtt = require("mqtt");
const os = require("os");
const readline = require("readline");
const crypto = require("crypto");

const HELP = `usage: nodejs_client.js [--broker HOST] [--port N] [--name NAME] [--client-id ID]
                        [--room ROOM] [--prefix PREFIX] [--send TEXT] [--listen]

Chat room client over MQTT.

  --broker HOST     MQTT broker host (default localhost)
  --port N          MQTT broker port (default 1883)
  --name NAME       display name
  --client-id ID    MQTT client id (default: js-<random>)
  --room ROOM       room (default lobby)
  --prefix PREFIX   topic prefix (default chatroom)
  --send TEXT       join, send TEXT once, leave and exit
  --listen          print room messages until Ctrl-C
  --help            this text`;

function parseArgs(argv) {
  const args = { broker: "localhost", port: 1883, name: ("js-" + os.hostname()).slice(0, 32),
                 clientId: null, room: "lobby", prefix: "chatroom", send: null, listen: false };
  const valued = { "--broker": "broker", "--port": "port", "--name": "name", "--client-id": "clientId",
                   "--room": "room", "--prefix": "prefix", "--send": "send" };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--help" || flag === "-h") { console.log(HELP); process.exit(0); }
    else if (flag === "--listen") args.listen = true;
    else if (valued[flag] && i + 1 < argv.length) args[valued[flag]] = argv[++i];
    else { console.error(`unknown or incomplete argument: ${flag}\n\n${HELP}`); process.exit(2); }
  }
  args.port = Number(args.port);
  args.clientId = args.clientId || "js-" + crypto.randomBytes(4).toString("hex");
  return args;
}

function topicsFor(prefix, room) {
  const base = room === "lobby" ? prefix : `${prefix}/${room}`;
  return { in: `${base}/messages/in`, out: `${base}/messages/out`, join: `${base}/users/join`,
           leave: `${base}/users/leave`, system: `${base}/system`, errors: `${prefix}/errors` };
}

function pad(n) { return String(n).padStart(2, "0"); }

// `[HH:MM:SS] user: text` for messages, `[HH:MM:SS] * text` for system events.
function formatEvent(event) {
  const date = new Date(event.timestamp);
  const when = isNaN(date) ? new Date() : date;
  const stamp = `${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}`;
  if (event.type === "system_message") return `[${stamp}] * ${event.message}`;
  const readings = event.data ? "  (" + Object.entries(event.data).map(([k, v]) => `${k}=${v}`).join(", ") + ")" : "";
  return `[${stamp}] ${event.username}: ${event.content}${readings}`;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const topics = topicsFor(args.prefix, args.room);
  const listen = args.listen || !args.send;
  const client = mqtt.connect({
    host: args.broker, port: args.port, clientId: args.clientId, clean: true, reconnectPeriod: 2000,
    connectTimeout: 15000,
    will: { topic: topics.leave, payload: JSON.stringify({ client_id: args.clientId }), qos: 1, retain: false },
  });
  let joined = false;
  let closing = false;

  const publish = (topic, body) => new Promise((resolve, reject) =>
    client.publish(topic, JSON.stringify(body), { qos: 1 }, (err) => (err ? reject(err) : resolve())));

  const say = (text) => publish(topics.in, { client_id: args.clientId, username: args.name, message: text,
                                            message_id: crypto.randomUUID() });

  const leaveAndExit = async (code) => {
    if (closing) return;
    closing = true;
    try { if (client.connected) await publish(topics.leave, { client_id: args.clientId }); } catch (e) { /* gone */ }
    client.end(false, {}, () => process.exit(code));
  };

  const giveUp = setTimeout(() => {
    if (!joined) { console.error(`cannot reach the broker at ${args.broker}:${args.port}`); process.exit(1); }
  }, 15000);

  client.on("connect", async () => {
    const subs = { [topics.errors]: { qos: 1 } };
    if (listen) { subs[topics.out] = { qos: 1 }; subs[topics.system] = { qos: 1 }; }
    client.subscribe(subs);
    await publish(topics.join, { client_id: args.clientId, username: args.name });  // again on every reconnect
    if (joined) return;
    joined = true;
    clearTimeout(giveUp);
    if (args.send) {
      await say(args.send);
      await leaveAndExit(0);
    } else if (!args.listen) {
      console.error(`joined ${args.room} as ${args.name}; type to send, Ctrl-D to leave`);
      const input = readline.createInterface({ input: process.stdin });
      input.on("line", (line) => { if (line.trim()) say(line.trim()); });
      input.on("close", () => leaveAndExit(0));
    }
  });

  client.on("message", (topic, payload) => {
    let event;
    try { event = JSON.parse(payload.toString("utf8")); } catch (e) { return; }
    if (topic === topics.errors) {
      if (event.client_id === args.clientId) console.error(`! rejected (${event.code}): ${event.error}`);
      return;
    }
    console.log(formatEvent(event));
  });
  client.on("error", (err) => console.error(`mqtt error: ${err.message}`));
  client.on("offline", () => { if (joined && !closing) console.error("connection lost; reconnecting"); });
  process.on("SIGINT", () => leaveAndExit(0));
  process.on("SIGTERM", () => leaveAndExit(0));
}

if (require.main === module) main();
module.exports = { formatEvent, parseArgs, topicsFor };
