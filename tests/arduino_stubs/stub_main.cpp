// Runs a sketch on a PC: setup(), then loop() once per simulated second.
//   ./sketch [seconds]
#include <cstdlib>
#include "Arduino.h"
#include "WiFi.h"

unsigned long fake_millis = 0;
FakeSerial Serial;
FakeWiFi WiFi;

void setup();
void loop();

int main(int argc, char **argv) {
  long seconds = argc > 1 ? std::atol(argv[1]) : 95;
  setup();
  for (long i = 0; i < seconds; i++) {
    loop();
    fake_millis += 1000;
  }
  return 0;
}
