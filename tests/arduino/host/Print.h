// Arduino's Print and Printable, enough for ArduinoJson and PubSubClient (host builds for tests).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

class Print {
 public:
  virtual ~Print() {}
  virtual size_t write(uint8_t c) = 0;
  virtual size_t write(const uint8_t *buffer, size_t size) {
    size_t n = 0;
    while (size--) n += write(*buffer++);
    return n;
  }
  size_t write(const char *text) { return text ? write((const uint8_t *)text, std::strlen(text)) : 0; }
  virtual void flush() {}
};

class Printable {
 public:
  virtual ~Printable() {}
  virtual size_t printTo(Print &p) const = 0;
};
