// Arduino's IPAddress (host builds for tests).
#pragma once
#include <cstdint>

class IPAddress {
 public:
  IPAddress() : bytes_{0, 0, 0, 0} {}
  IPAddress(uint8_t a, uint8_t b, uint8_t c, uint8_t d) : bytes_{a, b, c, d} {}
  explicit IPAddress(const uint8_t *address) : bytes_{address[0], address[1], address[2], address[3]} {}
  uint8_t operator[](int index) const { return bytes_[index]; }

 private:
  uint8_t bytes_[4];
};
