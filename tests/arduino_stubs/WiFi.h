// Minimal ESP32 WiFi for compiling sketches on a PC (tests only).
#pragma once
#include "Arduino.h"

#define WL_CONNECTED 3
#define WIFI_STA 1

struct FakeWiFi {
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
extern FakeWiFi WiFi;

class WiFiClient {};
