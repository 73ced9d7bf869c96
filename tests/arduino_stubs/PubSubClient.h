// PubSubClient for compiling sketches on a PC (tests only). Instead of a
// network it prints every MQTT action as one tab-separated line on stdout,
// so a test can replay the exact bytes through a real client.
#pragma once
#include <functional>
#include "Arduino.h"
#include "WiFi.h"

class PubSubClient {
 public:
  explicit PubSubClient(WiFiClient &) {}
  PubSubClient &setServer(const char *host, uint16_t port) {
    std::printf("SERVER\t%s\t%u\n", host, port);
    return *this;
  }
  PubSubClient &setCallback(std::function<void(char *, uint8_t *, unsigned int)> callback) {
    callback_ = callback;
    return *this;
  }
  bool setBufferSize(uint16_t size) {
    buffer_size_ = size;
    std::printf("BUFFER\t%u\n", size);
    return true;
  }
  PubSubClient &setKeepAlive(uint16_t seconds) {
    std::printf("KEEPALIVE\t%u\n", seconds);
    return *this;
  }
  bool connect(const char *id, const char *user, const char *pass, const char *will_topic, uint8_t will_qos,
               bool will_retain, const char *will_message) {
    std::printf("CONNECT\t%s\t%s\t%s\t%s\t%u\t%d\t%s\n", id, user ? user : "", pass ? pass : "", will_topic,
                will_qos, will_retain ? 1 : 0, will_message);
    connected_ = true;
    return true;
  }
  bool connected() { return connected_; }
  bool loop() { return connected_; }
  int state() { return connected_ ? 0 : -1; }
  bool publish(const char *topic, const uint8_t *payload, unsigned int length, bool retained) {
    // Like the real client: a packet larger than the buffer is not sent.
    if (length + std::strlen(topic) + 7 > buffer_size_) return false;
    std::printf("PUBLISH\t%s\t%d\t%.*s\n", topic, retained ? 1 : 0, (int)length, (const char *)payload);
    return true;
  }
  bool subscribe(const char *topic, uint8_t qos) {
    std::printf("SUBSCRIBE\t%s\t%u\n", topic, qos);
    return true;
  }

 private:
  std::function<void(char *, uint8_t *, unsigned int)> callback_;
  uint16_t buffer_size_ = 256;  // the library's default
  bool connected_ = false;
};
