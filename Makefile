# tunewatch: `make up` runs the stack on its demo workload, `make test` runs the tests.
# Both bootstrap what they need first (scripts/bootstrap.sh: idempotent, quiet when done).

VENV      ?= .venv
PY        := $(VENV)/bin/python
TUNEWATCH := $(VENV)/bin/tunewatch
UP_ARGS   ?=
PYTEST_ARGS ?=

.PHONY: bootstrap up test bench lint clean dashboards rules lock secrets

bootstrap:
	@scripts/bootstrap.sh

up: bootstrap
	@$(TUNEWATCH) up $(UP_ARGS)

# Every secret file docker-compose.yml names (./secrets/*): a random value, mode 0600, an
# existing one kept. No bootstrap: a Docker host needs only Python 3 with PyYAML for this.
secrets:
	@if [ -x $(PY) ]; then py=$(PY); else py=python3; fi; \
	if ! $$py -c 'import yaml' 2>/dev/null; then \
		echo "make secrets: needs Python 3 with PyYAML (apt-get install python3-yaml)," \
			"or run scripts/bootstrap.sh first" >&2; exit 1; fi; \
	PYTHONPATH=. $$py -m tunewatch secrets create

# pytest exits 5 when it collected nothing: that is a failure here, never a silent pass.
test:
	@TUNEWATCH_BOOTSTRAP_OPTIONAL=1 scripts/bootstrap.sh
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

bench: bootstrap
	@$(PY) bench/run_all.py

lint: bootstrap
	@$(VENV)/bin/ruff check .
	@promtool check config prometheus/prometheus.yml
	@$(PY) scripts/rules.py --check
	@promtool check rules prometheus/rules/*.yml
	@promtool test rules prometheus/tests/*.yml
	@amtool check-config alertmanager/alertmanager.yml

# Grafana dashboards: grafana/dashboards/*.json from grafana/dashboards_src/ (commit both).
# Re-pin constraints.txt: the newest versions pyproject.toml's ranges allow, torch kept.
lock: bootstrap
	@$(PY) -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' \
		>$(VENV)/torch-constraint.txt
	@$(PY) -m pip install -q -U --upgrade-strategy eager -c $(VENV)/torch-constraint.txt \
		-e ".[dev]"
	@$(PY) scripts/lock.py

dashboards: bootstrap
	@PYTHONPATH=grafana $(PY) -m dashboards_src

# Prometheus rules and their promtool tests: prometheus/rules/ and prometheus/tests/ from
# prometheus/templates/ (thresholds and runbook_base_url in its config.yml; commit both).
rules: bootstrap
	@$(PY) scripts/rules.py

clean:
	rm -rf var .pytest_cache
