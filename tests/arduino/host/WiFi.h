// ESP32 WiFi for running sketches on a PC (tests only). WiFiClient is a real TCP socket.
//
// The host plays the network: whatever broker address the sketch was built with,
// HOST_MQTT_HOST (default 127.0.0.1) / HOST_MQTT_PORT (environment) say where that broker really is,
// so a sketch runs unmodified against the test's own mosquitto.
#pragma once
#include "Arduino.h"
#include "Client.h"

#define WL_CONNECTED 3
#define WIFI_STA 1

struct HostWiFi {
  void mode(int) {}
  void begin(const char *, const char *) { started = true; }
  int status() { return started ? WL_CONNECTED : 0; }
  void macAddress(uint8_t *mac) {
    const uint8_t fixed[6] = {0x24, 0x6f, 0x28, 0xaa, 0xbb, 0xcc};
    std::memcpy(mac, fixed, 6);
  }
  long RSSI() { return -61; }
  bool started = false;
};
extern HostWiFi WiFi;

class WiFiClient : public Client {
 public:
  int connect(IPAddress ip, uint16_t port) override;
  int connect(const char *host, uint16_t port) override;
  size_t write(uint8_t c) override { return write(&c, 1); }
  size_t write(const uint8_t *buf, size_t size) override;
  int available() override;
  int read() override;
  int read(uint8_t *buf, size_t size) override;
  int peek() override;
  void flush() override {}
  void stop() override;
  uint8_t connected() override;
  operator bool() override { return fd_ >= 0; }

 private:
  int fd_ = -1;
};
