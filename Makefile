# Two commands for a fresh Debian/Ubuntu machine:
#   make run   - set up .venv, make sure a broker answers, serve http://127.0.0.1:5000
#   make test  - same set-up plus test tools (mosquitto, chromium), then pytest
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: run cluster test bench bench-hostile system-test-deps clean mutate

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer needed (Debian 12, Ubuntu 24.04): PYTHON=python3.11 make ..."; exit 1; }
	@$(PYTHON) -c 'import venv' 2>/dev/null || { echo "python3-venv missing: sudo apt-get install -y python3-venv"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

# requirements-compat.txt: paho-mqtt 1.x for the original project's client, beside the venv.
$(VENV)/.installed-dev: requirements-dev.txt requirements-compat.txt $(VENV)/.installed
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PIP) install --quiet --disable-pip-version-check --upgrade --target $(VENV)/compat -r requirements-compat.txt
	@touch $@

# tools.run starts mosquitto when no broker answers, then the server, and stops
# that mosquitto again when the server exits (Ctrl-C).
run: $(VENV)/.installed
	$(PY) -m tools.run

# Several instances on this machine (docs/SCALING.md): a broker, Redis (started here
# unless REDIS_URL is set) and INSTANCES servers on PORT, PORT+1, ... (or --ports); Ctrl-C stops all.
INSTANCES ?= 2
cluster: $(VENV)/.installed
	$(PY) -m tools.cluster --instances $(INSTANCES)

# Tests start their own mosquitto, redis-server, nginx (the docs' proxy blocks), a RabbitMQ node and a
# nats-server (tests/test_brokers_*.py, on ports of their own), make certificates with openssl, drive Debian's
# chromium, build sketches with g++ and run the Node.js client: all must be installed.
system-test-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto mosquitto-clients"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v g++ >/dev/null 2>&1 || missing="$$missing g++"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing="$$missing rabbitmq-server"; \
	command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v jq >/dev/null 2>&1 || missing="$$missing jq"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "Missing:$$missing. Run: sudo apt-get install -y$$missing"; exit 1; fi; \
	  echo "installing$$missing with apt-get"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

# Lint and types first (seconds): the layers' import rules are a test (tests/test_layers.py).
test: $(VENV)/.installed-dev system-test-deps
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

# BENCH_QUICK=1: a smoke run of every scenario; BENCH_NODERED=1: Node-RED (npm, pinned) beside us.
bench: $(VENV)/.installed-dev system-test-deps
	$(PY) -m bench.relay_bench
	$(PY) -m bench.fanout_bench

# What a stranger can cost (docs/SECURITY.md): RSS and page bytes for 2 000 client_ids, a polling
# flood and 10 100 trickling sockets against /healthz, a discovery flood, a lock-out attempt and
# the retained footprint of fresh device ids. HOSTILE_ROOT=<another checkout> measures that one.
HOSTILE_ROOT ?= .
bench-hostile: $(VENV)/.installed-dev system-test-deps
	$(PY) -m bench.hostile_load
	$(PY) -m bench.hostile_web --root $(HOSTILE_ROOT)
	$(PY) -m bench.hostile_mqtt --root $(HOSTILE_ROOT)

# Mutation testing (docs/TESTING.md), not part of `make test`: mutmut over chatroom/core and
# chatroom/web/access.py, [tool.mutmut] in pyproject.toml. It runs in a copy of the working tree
# under test-artifacts/ (ignored by git, like the mutants/ folder mutmut writes there), niced,
# MUTATE_CHILDREN workers at a time and at most MUTATE_TIMEOUT; the summary is printed at the end.
MUTATE_DIR      ?= test-artifacts/mutmut
MUTATE_CHILDREN ?= 2
MUTATE_TIMEOUT  ?= 45m
mutate: $(VENV)/.installed-dev requirements-mutate.txt
	$(PIP) install --quiet --disable-pip-version-check -r requirements-mutate.txt
	rm -rf $(MUTATE_DIR) && mkdir -p $(MUTATE_DIR)
	tar --exclude=__pycache__ -cf - chatroom mqtt_service tests templates static app.py pytest.ini pyproject.toml \
	  | tar -xf - -C $(MUTATE_DIR)
	cd $(MUTATE_DIR) && { timeout $(MUTATE_TIMEOUT) nice -n 10 $(abspath $(VENV))/bin/mutmut run \
	  --max-children $(MUTATE_CHILDREN) || echo "mutmut run stopped early (exit $$?): results so far"; } \
	  && $(abspath $(VENV))/bin/mutmut results | grep -v ': no tests$$' \
	  ; $(abspath $(VENV))/bin/mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json && echo
	@echo "A mutant's diff: cd $(MUTATE_DIR) && $(abspath $(VENV))/bin/mutmut show <mutant>"

clean:
	rm -rf $(VENV) .pytest_cache data
