// Minimal Arduino core for compiling sketches on a PC (tests only).
#pragma once
#include <math.h>  // like the real core: isnan, roundf in the global namespace
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>

typedef uint8_t byte;

extern unsigned long fake_millis;  // advanced by stub_main.cpp
inline unsigned long millis() { return fake_millis; }
inline void delay(unsigned long ms) { fake_millis += ms; }
inline float temperatureRead() { return 47.3f; }

// Serial output goes to stderr so stdout carries only what goes over MQTT.
struct FakeSerial {
  void begin(unsigned long) {}
  void println(const char *text) { std::fprintf(stderr, "SERIAL %s\n", text); }
  void printf(const char *format, ...) __attribute__((format(printf, 2, 3))) {
    std::fprintf(stderr, "SERIAL ");
    va_list args;
    va_start(args, format);
    std::vfprintf(stderr, format, args);
    va_end(args);
  }
};
extern FakeSerial Serial;
