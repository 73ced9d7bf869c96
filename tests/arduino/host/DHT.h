// Minimal Adafruit DHT for compiling sketches on a PC (tests only): a slowly warming room.
#pragma once
#include "Arduino.h"

#define DHT22 22

class DHT {
 public:
  DHT(int, int) {}
  void begin() {}
  float readTemperature() { return 21.0f + 0.5f * (reads_++); }
  float readHumidity() { return 40.0f; }

 private:
  int reads_ = 0;
};
