// A small Arduino core for running sketches on a PC against a real broker (tests only).
//
// Time: millis() runs HOST_TIME_SCALE times faster than the wall clock (default 1),
// so a sketch that reports every 30 s can be watched for a few real seconds.
// Serial prints to stdout, one sketch line per line.
#pragma once
#include <math.h>  // like the real core: isnan, roundf in the global namespace
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "Print.h"

typedef uint8_t byte;
typedef bool boolean;

#define PROGMEM
#define pgm_read_byte(address) (*(const uint8_t *)(address))
#define pgm_read_byte_near(address) pgm_read_byte(address)
class __FlashStringHelper;
#define F(text) (reinterpret_cast<const __FlashStringHelper *>(text))

unsigned long millis();
void delay(unsigned long ms);
inline void yield() {}
long random(long howbig);
long random(long howsmall, long howbig);
inline float temperatureRead() { return 47.3f; }  // the ESP32's die temperature

// GPIO: a pin's level is kept, and every write is printed (`pin 2 = HIGH`) so a test sees it.
#define HIGH 0x1
#define LOW 0x0
#define INPUT 0x01
#define OUTPUT 0x03
void pinMode(uint8_t pin, uint8_t mode);
void digitalWrite(uint8_t pin, uint8_t value);
int digitalRead(uint8_t pin);

class String {
 public:
  String() {}
  String(const char *text) : s_(text ? text : "") {}
  String(const std::string &text) : s_(text) {}
  String(char c) : s_(1, c) {}
  String(int value) : s_(std::to_string(value)) {}
  String(unsigned int value) : s_(std::to_string(value)) {}
  String(long value) : s_(std::to_string(value)) {}
  String(unsigned long value) : s_(std::to_string(value)) {}
  String(float value, unsigned char decimals = 2) : s_(format(value, decimals)) {}
  String(double value, unsigned char decimals = 2) : s_(format(value, decimals)) {}
  String &operator=(const char *text) {
    s_ = text ? text : "";
    return *this;
  }
  const char *c_str() const { return s_.c_str(); }
  unsigned int length() const { return (unsigned int)s_.size(); }
  bool concat(const char *text) {
    if (text) s_ += text;
    return true;
  }
  bool concat(char c) {
    s_ += c;
    return true;
  }
  String &operator+=(const String &other) {
    s_ += other.s_;
    return *this;
  }
  String &operator+=(const char *text) {
    concat(text);
    return *this;
  }
  String &operator+=(char c) {
    s_ += c;
    return *this;
  }
  friend String operator+(const String &a, const String &b) { return String(a.s_ + b.s_); }
  friend String operator+(const String &a, const char *b) { return String(a.s_ + (b ? b : "")); }
  bool operator==(const String &other) const { return s_ == other.s_; }
  char operator[](unsigned int index) const { return s_[index]; }

 private:
  static std::string format(double value, unsigned char decimals) {
    char buffer[64];
    std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
    return buffer;
  }
  std::string s_;
};

class HostSerial : public Print {
 public:
  void begin(unsigned long) {}
  size_t write(uint8_t c) override { return std::fputc(c, stdout) == EOF ? 0 : 1; }
  using Print::write;
  size_t print(const char *text) { return std::fputs(text, stdout) >= 0 ? std::strlen(text) : 0; }
  size_t print(const String &text) { return print(text.c_str()); }
  size_t print(char c) { return write((uint8_t)c); }
  size_t print(int value) { return std::printf("%d", value); }
  size_t print(unsigned int value) { return std::printf("%u", value); }
  size_t print(long value) { return std::printf("%ld", value); }
  size_t print(unsigned long value) { return std::printf("%lu", value); }
  size_t print(double value, int decimals = 2) { return std::printf("%.*f", decimals, value); }
  template <typename T>
  size_t println(const T &value) {
    size_t n = print(value);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    return n + 1;
  }
  size_t println() {
    std::fputc('\n', stdout);
    std::fflush(stdout);
    return 1;
  }
  size_t printf(const char *format, ...) __attribute__((format(printf, 2, 3))) {
    va_list args;
    va_start(args, format);
    int n = std::vprintf(format, args);
    va_end(args);
    std::fflush(stdout);
    return n < 0 ? 0 : (size_t)n;
  }
};
extern HostSerial Serial;
