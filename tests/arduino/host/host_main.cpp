// Runs a sketch on a PC: setup(), then loop() until the wall-clock seconds given
// as argv[1] (default 30) have passed. The test stops the process by its PID anyway.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

#include "Arduino.h"
#include "WiFi.h"

HostSerial Serial;
HostWiFi WiFi;

static double wall_seconds() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec + now.tv_nsec / 1e9;
}

static const double started_at = wall_seconds();

static double time_scale() {
  const char *scale = std::getenv("HOST_TIME_SCALE");
  return scale ? std::atof(scale) : 1.0;
}

unsigned long millis() { return (unsigned long)((wall_seconds() - started_at) * 1000.0 * time_scale()); }

void delay(unsigned long ms) { usleep((useconds_t)(ms * 1000.0 / time_scale())); }

static uint8_t pin_levels[64];

void pinMode(uint8_t, uint8_t) {}

void digitalWrite(uint8_t pin, uint8_t value) {
  pin_levels[pin % 64] = value ? HIGH : LOW;
  std::printf("pin %u = %s\n", (unsigned)pin, value ? "HIGH" : "LOW");
  std::fflush(stdout);
}

int digitalRead(uint8_t pin) { return pin_levels[pin % 64]; }

long random(long howbig) { return howbig > 0 ? std::rand() % howbig : 0; }
long random(long howsmall, long howbig) { return howsmall + random(howbig - howsmall); }

int WiFiClient::connect(IPAddress ip, uint16_t port) {
  char host[16];
  std::snprintf(host, sizeof(host), "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
  return connect(host, port);
}

int WiFiClient::connect(const char *host, uint16_t port) {
  const char *real_host = std::getenv("HOST_MQTT_HOST");
  const char *real_port = std::getenv("HOST_MQTT_PORT");
  char port_text[8];
  std::snprintf(port_text, sizeof(port_text), "%u", real_port ? (unsigned)std::atoi(real_port) : port);
  addrinfo hints = {}, *found = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  // The sketch's broker name ("your_mqtt_broker_ip") means nothing here: the host decides.
  (void)host;
  if (getaddrinfo(real_host ? real_host : "127.0.0.1", port_text, &hints, &found) != 0) return 0;
  fd_ = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
  int ok = fd_ >= 0 && ::connect(fd_, found->ai_addr, found->ai_addrlen) == 0;
  freeaddrinfo(found);
  if (!ok) {
    stop();
    return 0;
  }
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return 1;
}

size_t WiFiClient::write(const uint8_t *buf, size_t size) {
  if (fd_ < 0) return 0;
  ssize_t sent = send(fd_, buf, size, MSG_NOSIGNAL);
  return sent < 0 ? 0 : (size_t)sent;
}

int WiFiClient::available() {
  if (fd_ < 0) return 0;
  pollfd waiting = {fd_, POLLIN, 0};
  if (poll(&waiting, 1, 1) <= 0) return 0;  // 1 ms: loop() must not spin a core
  int count = 0;
  ioctl(fd_, FIONREAD, &count);
  if (count == 0) stop();  // readable with nothing to read: the broker closed the connection
  return count;
}

int WiFiClient::read() {
  uint8_t c;
  return read(&c, 1) == 1 ? c : -1;
}

int WiFiClient::read(uint8_t *buf, size_t size) {
  if (fd_ < 0) return -1;
  ssize_t got = recv(fd_, buf, size, 0);
  if (got <= 0) {
    stop();
    return -1;
  }
  return (int)got;
}

int WiFiClient::peek() {
  uint8_t c;
  return fd_ >= 0 && recv(fd_, &c, 1, MSG_PEEK) == 1 ? c : -1;
}

void WiFiClient::stop() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

uint8_t WiFiClient::connected() { return fd_ >= 0; }

void setup();
void loop();

int main(int argc, char **argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  double seconds = argc > 1 ? std::atof(argv[1]) : 30.0;
  setup();
  while (wall_seconds() - started_at < seconds) loop();
  return 0;
}
