// ESP32 room sensor: joins the chat room over MQTT and posts a temperature /
// humidity reading every 30 s as a chat message with a `data` object, so the
// readings show up on the web page and in GET /api/readings.
//
// It can also be told (PROTOCOL 11): its join declares one command, `led` (true/false),
// which switches LED_PIN; the server's command arrives on chatroom/devices/<client_id>/commands
// and the sketch answers on chatroom/devices/<client_id>/commands/ack. From a shell:
//   python clients/python_client.py --command esp32-aabbcc led true
//
// It publishes on its own device topics (PROTOCOL 10): chatroom/messages/in/<client_id>,
// chatroom/users/join/<client_id> and chatroom/users/leave/<client_id> (also its will),
// which a broker ACL can bind to its login (clients/mosquitto/acl.example), so no other
// device can speak as this one. SHARED_TOPICS 1 uses the shared topics instead, for a
// server older than device topics.
//
// Libraries (Arduino Library Manager): PubSubClient (Nick O'Leary) 2.8,
// ArduinoJson (Benoit Blanchon) 7.x, and for a DHT22: "DHT sensor library" (Adafruit).
// Board: any ESP32 (Arduino core 2.x or 3.x).
//
// Edit the settings below; nothing else needs changing.

#include <WiFi.h>
#include <PubSubClient.h>
#include <ArduinoJson.h>

// ---- settings ------------------------------------------------------------
const char *WIFI_SSID = "your-wifi";
const char *WIFI_PASSWORD = "your-wifi-password";
const char *MQTT_BROKER = "192.168.1.10";     // the machine running mosquitto
const uint16_t MQTT_PORT = 1883;
// The broker login. With one, the login is also the client_id in the room (the
// shipped broker ACL lets user X publish only as X); empty: anonymous, and the
// client_id is esp32-<the last three bytes of the MAC address>.
#ifndef MQTT_USER
#define MQTT_USER ""
#endif
#ifndef MQTT_PASS
#define MQTT_PASS ""
#endif
const char *TOPIC_PREFIX = "chatroom";         // MQTT_TOPIC_PREFIX of the server
const char *ROOM = "lobby";                    // "lobby" = the default room
const char *DISPLAY_NAME = "ESP32 sensor";     // shown in the room (max 32 characters)
const unsigned long READING_INTERVAL_MS = 30000;

// 0: publish on this device's own topics (messages/in/<client_id>, ...).
// 1: the shared topics (messages/in, ...) with the client_id in the payload, for a
//    server older than device topics.
#ifndef SHARED_TOPICS
#define SHARED_TOPICS 0
#endif

// 1: a DHT22 on DHT_PIN gives temperature and humidity.
// 0: no extra hardware; the chip's own temperature sensor and the Wi-Fi signal are sent.
#ifndef SENSOR_DHT22
#define SENSOR_DHT22 1
#endif
#define DHT_PIN 4

// The LED the `led` command switches (GPIO 2 is the blue LED of most ESP32 DevKit boards).
#ifndef LED_PIN
#define LED_PIN 2
#endif
// ---------------------------------------------------------------------------

#if SENSOR_DHT22
#include <DHT.h>
DHT dht(DHT_PIN, DHT22);
#endif

// A login is the last level of the device topics: it cannot hold '/', '+' or '#'
// (checked when the sketch is compiled), and it is a client_id of at most 64 characters.
constexpr bool topicLevelOk(const char *text) {
  return *text == 0 || (*text != '/' && *text != '+' && *text != '#' && topicLevelOk(text + 1));
}
static_assert(SHARED_TOPICS || topicLevelOk(MQTT_USER),
              "MQTT_USER cannot be a topic level: no '/', '+' or '#' (or set SHARED_TOPICS 1)");
static_assert(sizeof(MQTT_USER) <= 65, "MQTT_USER is the client_id: at most 64 characters");

// PubSubClient silently drops any packet larger than its buffer (256 bytes by
// default). A short reading on messages/out is ~330 bytes, and the largest payload
// the server can send (2000 four-byte characters, 1 KB of data, the longest ids)
// is 10,212 bytes: 11 KiB holds every room message (docs/CLIENTS.md).
const uint16_t MQTT_BUFFER_SIZE = 11264;
const unsigned long RECONNECT_INTERVAL_MS = 5000;
// The server marks a device silent after MQTT_USER_TIMEOUT (600 s by default);
// a repeated join every third of that keeps it present between readings.
const unsigned long HEARTBEAT_INTERVAL_MS = 200000;

WiFiClient network;
PubSubClient mqtt(network);

char clientId[65];
char topicIn[160], topicOut[160], topicJoin[160], topicLeave[160], topicErrors[96];
char topicCommands[160], topicAck[160];
bool commandsEnabled = false;  // only with a client_id the server uses as a topic level as it is
bool ledOn = false;
char leavePayload[160];
unsigned long lastReadingAt = 0;
unsigned long lastReconnectAttempt = 0;
unsigned long lastJoinAt = 0;
unsigned long readingNumber = 0;
bool everPublished = false;

void buildTopics() {
  char base[64];
  if (strcmp(ROOM, "lobby") == 0) {
    snprintf(base, sizeof(base), "%s", TOPIC_PREFIX);
  } else {
    snprintf(base, sizeof(base), "%s/%s", TOPIC_PREFIX, ROOM);
  }
  // Device topics end in our client_id: the topic itself says who is speaking.
  const char *own = SHARED_TOPICS ? "" : "/";
  const char *id = SHARED_TOPICS ? "" : clientId;
  snprintf(topicIn, sizeof(topicIn), "%s/messages/in%s%s", base, own, id);
  snprintf(topicOut, sizeof(topicOut), "%s/messages/out", base);
  snprintf(topicJoin, sizeof(topicJoin), "%s/users/join%s%s", base, own, id);
  snprintf(topicLeave, sizeof(topicLeave), "%s/users/leave%s%s", base, own, id);
  snprintf(topicErrors, sizeof(topicErrors), "%s/errors", TOPIC_PREFIX);
  // The server names P/devices/<id>/ by the client_id itself when it is only letters,
  // digits, '-' and '_' (any other id gets a hashed name, which this sketch does not compute).
  commandsEnabled = strspn(clientId, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
                    strlen(clientId);
  snprintf(topicCommands, sizeof(topicCommands), "%s/devices/%s/commands", TOPIC_PREFIX, clientId);
  snprintf(topicAck, sizeof(topicAck), "%s/devices/%s/commands/ack", TOPIC_PREFIX, clientId);
  if (!commandsEnabled) {
    Serial.println("note: client id has characters other than letters, digits, - and _: no commands");
  }
}

void buildClientId() {
  if (strlen(MQTT_USER) > 0) {
    // The login: a broker with use_username_as_clientid and the shipped ACL knows us by it.
    snprintf(clientId, sizeof(clientId), "%s", MQTT_USER);
  } else {
    // Unique per board: the last three bytes of the Wi-Fi MAC address.
    uint8_t mac[6];
    WiFi.macAddress(mac);
    snprintf(clientId, sizeof(clientId), "esp32-%02x%02x%02x", mac[3], mac[4], mac[5]);
  }
  // Kept in the payloads on the device topics too (the same id; older servers log it).
  // Should it not fit, the will is empty: on users/leave/<client_id> that still says who left.
  JsonDocument leave;
  leave["client_id"] = clientId;
  if (measureJson(leave) < sizeof(leavePayload)) {
    serializeJson(leave, leavePayload, sizeof(leavePayload));
  }
}

void onMqttMessage(char *topic, byte *payload, unsigned int length) {
  if (commandsEnabled && strcmp(topic, topicCommands) == 0) {
    handleCommand(payload, length);
    return;
  }
  // Room traffic (and our own errors) to the serial monitor.
  Serial.printf("[%s] %.*s\n", topic, (int)length, (const char *)payload);
}

// {"command_id","command","value","from","timestamp"} -> switch the LED, then answer
// {"command_id","ok":true,"result":<the LED's state>} or {"command_id","ok":false,"error"}.
// Setting the LED twice to one value changes nothing, so a QoS 1 redelivery is harmless.
void handleCommand(const byte *payload, unsigned int length) {
  JsonDocument command;
  // A const input makes ArduinoJson copy the strings: payload lives in PubSubClient's
  // buffer, which the ack's publish below overwrites.
  if (deserializeJson(command, (const char *)payload, length) || !command["command_id"].is<const char *>()) {
    Serial.println("ignored a command without a command_id (nothing to answer)");
    return;
  }
  JsonDocument ack;
  ack["command_id"] = command["command_id"];
  if (command["command"] != "led") {
    ack["ok"] = false;
    ack["error"] = "unknown command";
  } else if (!command["value"].is<bool>()) {
    ack["ok"] = false;
    ack["error"] = "led expects true or false";
  } else {
    ledOn = command["value"].as<bool>();
    digitalWrite(LED_PIN, ledOn ? HIGH : LOW);
    ack["ok"] = true;
    ack["result"] = ledOn;
  }
  publishJson(topicAck, ack);
  Serial.printf("command %s from %s: %s\n", command["command"] | "?", command["from"] | "?",
                ack["ok"].as<bool>() ? (ledOn ? "LED on" : "LED off") : ack["error"].as<const char *>());
}

bool publishJson(const char *topic, JsonDocument &doc) {
  char buffer[512];
  if (measureJson(doc) >= sizeof(buffer)) {
    Serial.println("message too large for the buffer; not sent");
    return false;
  }
  size_t size = serializeJson(doc, buffer, sizeof(buffer));
  return mqtt.publish(topic, (const uint8_t *)buffer, size, false);
}

bool connectMqtt() {
  // The will tells the room we left if power or Wi-Fi is lost.
  const char *user = strlen(MQTT_USER) ? MQTT_USER : nullptr;
  const char *pass = strlen(MQTT_PASS) ? MQTT_PASS : nullptr;
  if (!mqtt.connect(clientId, user, pass, topicLeave, 1, false, leavePayload)) {
    Serial.printf("MQTT connect failed, state %d; retrying in %lu s\n", mqtt.state(),
                  RECONNECT_INTERVAL_MS / 1000);
    return false;
  }
  // Subscribe first: the room's answer to our join must not pass us by.
  mqtt.subscribe(topicOut, 1);
  mqtt.subscribe(topicErrors, 1);
  if (commandsEnabled) {
    mqtt.subscribe(topicCommands, 1);
  }
  sendJoin();  // again after every reconnect; the server ignores repeats
  lastJoinAt = millis();
  Serial.printf("MQTT connected as %s\n", clientId);
  return true;
}

void sendJoin() {
  JsonDocument join;
  join["client_id"] = clientId;
  join["username"] = DISPLAY_NAME;
  if (commandsEnabled) {
    join["commands"]["led"]["type"] = "bool";  // declared with every join and heartbeat
  }
  publishJson(topicJoin, join);
}

void publishReading() {
#if SENSOR_DHT22
  float temperature = dht.readTemperature();
  float humidity = dht.readHumidity();
  if (isnan(temperature) || isnan(humidity)) {
    Serial.println("DHT22 read failed; skipping this reading");
    return;
  }
#else
  float temperature = temperatureRead();  // the ESP32's own die temperature
  long rssi = WiFi.RSSI();
#endif
  readingNumber++;
  char text[96];
  JsonDocument doc;
  doc["client_id"] = clientId;
  doc["username"] = DISPLAY_NAME;
  char messageId[96];
  snprintf(messageId, sizeof(messageId), "%s-%lu-%lu", clientId, (unsigned long)millis(), readingNumber);
  doc["message_id"] = messageId;  // lets the server drop a QoS redelivery
  JsonObject data = doc["data"].to<JsonObject>();
#if SENSOR_DHT22
  snprintf(text, sizeof(text), "%.1f °C, %.0f %% humidity", temperature, humidity);
  data["temperature"] = roundf(temperature * 10) / 10;
  data["humidity"] = roundf(humidity * 10) / 10;
#else
  snprintf(text, sizeof(text), "chip %.1f °C, Wi-Fi %ld dBm", temperature, rssi);
  data["temperature"] = roundf(temperature * 10) / 10;
  data["rssi"] = rssi;
#endif
  doc["message"] = text;
  if (publishJson(topicIn, doc)) {
    Serial.printf("sent: %s\n", text);
  }
}

void setup() {
  Serial.begin(115200);
  pinMode(LED_PIN, OUTPUT);
  digitalWrite(LED_PIN, LOW);
#if SENSOR_DHT22
  dht.begin();
#endif
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  buildClientId();
  buildTopics();
  mqtt.setServer(MQTT_BROKER, MQTT_PORT);
  mqtt.setBufferSize(MQTT_BUFFER_SIZE);
  mqtt.setKeepAlive(30);
  mqtt.setCallback(onMqttMessage);
  Serial.printf("room sensor %s starting\n", clientId);
}

void loop() {
  // Never block: Wi-Fi and MQTT reconnect in the background of loop().
  if (WiFi.status() != WL_CONNECTED) {
    return;  // the ESP32 Wi-Fi stack reconnects by itself
  }
  unsigned long now = millis();
  if (!mqtt.connected()) {
    if (now - lastReconnectAttempt >= RECONNECT_INTERVAL_MS || lastReconnectAttempt == 0) {
      lastReconnectAttempt = now;
      connectMqtt();
    }
    return;
  }
  mqtt.loop();
  if (now - lastJoinAt >= HEARTBEAT_INTERVAL_MS) {
    lastJoinAt = now;
    sendJoin();
  }
  if (!everPublished || now - lastReadingAt >= READING_INTERVAL_MS) {
    everPublished = true;
    lastReadingAt = now;
    publishReading();
  }
}
