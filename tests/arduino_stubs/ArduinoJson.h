// The part of ArduinoJson 7 our sketch uses, for compiling it on a PC (tests only):
// JsonDocument, operator[], to<JsonObject>(), measureJson and serializeJson.
// Values keep their insertion order; floats print like ArduinoJson's (shortest
// form that reads back as the same float).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <list>
#include <string>
#include <utility>
#include "Arduino.h"

namespace stubjson {

struct Node {
  enum Kind { Null, String, Float, Integer, Boolean, Object } kind = Null;
  std::string text;
  float real = 0;
  long long integer = 0;
  bool flag = false;
  std::list<std::pair<std::string, Node>> members;  // a list: references stay valid

  Node &member(const char *key) {
    if (kind != Object) {
      kind = Object;
      members.clear();
    }
    for (auto &entry : members)
      if (entry.first == key) return entry.second;
    members.emplace_back(key, Node());
    return members.back().second;
  }
};

inline void write_string(std::string &out, const std::string &value) {
  out += '"';
  for (unsigned char c : value) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
          out += escaped;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

inline void write_node(std::string &out, const Node &node) {
  char number[32];
  switch (node.kind) {
    case Node::Null: out += "null"; break;
    case Node::String: write_string(out, node.text); break;
    case Node::Boolean: out += node.flag ? "true" : "false"; break;
    case Node::Integer:
      std::snprintf(number, sizeof(number), "%lld", node.integer);
      out += number;
      break;
    case Node::Float:
      if (std::floor(node.real) == node.real && std::fabs(node.real) < 1e9f) {
        std::snprintf(number, sizeof(number), "%.0f", node.real);  // 40, not 4e+01
      } else {
        for (int precision = 1; precision <= 9; precision++) {  // shortest exact form
          std::snprintf(number, sizeof(number), "%.*g", precision, node.real);
          if (std::strtof(number, nullptr) == node.real) break;
        }
      }
      out += number;
      break;
    case Node::Object: {
      out += '{';
      bool first = true;
      for (const auto &entry : node.members) {
        if (!first) out += ',';
        first = false;
        write_string(out, entry.first);
        out += ':';
        write_node(out, entry.second);
      }
      out += '}';
      break;
    }
  }
}

}  // namespace stubjson

class JsonObject;

class JsonVariant {
 public:
  explicit JsonVariant(stubjson::Node *node) : node_(node) {}
  JsonVariant &operator=(const char *value) { set_text(value); return *this; }
  JsonVariant &operator=(char *value) { set_text(value); return *this; }
  JsonVariant &operator=(float value) { node_->kind = stubjson::Node::Float; node_->real = value; return *this; }
  JsonVariant &operator=(double value) { return *this = static_cast<float>(value); }
  JsonVariant &operator=(bool value) { node_->kind = stubjson::Node::Boolean; node_->flag = value; return *this; }
  JsonVariant &operator=(int value) { return set_integer(value); }
  JsonVariant &operator=(long value) { return set_integer(value); }
  JsonVariant &operator=(unsigned long value) { return set_integer(static_cast<long long>(value)); }
  JsonVariant &operator=(unsigned int value) { return set_integer(value); }
  template <typename T> T to();

 private:
  void set_text(const char *value) {
    node_->kind = stubjson::Node::String;
    node_->text = value;
  }
  JsonVariant &set_integer(long long value) {
    node_->kind = stubjson::Node::Integer;
    node_->integer = value;
    return *this;
  }
  stubjson::Node *node_;
};

class JsonObject {
 public:
  explicit JsonObject(stubjson::Node *node) : node_(node) { node_->kind = stubjson::Node::Object; }
  JsonVariant operator[](const char *key) { return JsonVariant(&node_->member(key)); }

 private:
  stubjson::Node *node_;
};

template <> inline JsonObject JsonVariant::to<JsonObject>() {
  node_->members.clear();
  return JsonObject(node_);
}

class JsonDocument {
 public:
  JsonDocument() { root_.kind = stubjson::Node::Object; }
  JsonVariant operator[](const char *key) { return JsonVariant(&root_.member(key)); }
  std::string dump() const {
    std::string out;
    stubjson::write_node(out, root_);
    return out;
  }

 private:
  stubjson::Node root_;
};

inline size_t measureJson(const JsonDocument &doc) { return doc.dump().size(); }

inline size_t serializeJson(const JsonDocument &doc, char *buffer, size_t size) {
  std::string text = doc.dump();
  size_t written = text.size() < size ? text.size() : size - 1;
  std::memcpy(buffer, text.data(), written);
  buffer[written] = '\0';
  return written;
}
