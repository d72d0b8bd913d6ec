# Two entry points on a fresh machine: `make demo` and `make test`.
# The virtualenv lives outside the clone, keyed by the dependency file's hash,
# so a clean clone with unchanged dependencies reuses it.
PYTHON ?= python3
DEPS_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
VENV ?= $(HOME)/.cache/lakelens/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
# The CPU build of torch ships on these machines; pip prefers it over the multi-GB CUDA download.
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)

DEMO_LAKE ?= $(CURDIR)/.demo-lake
DEMO_USERS ?= 4000
DEMO_DAYS ?= 4
DEMO_DATE ?= 2026-01-02
DEMO_DAYS_LIST ?= 2026-01-01 2026-01-02 2026-01-03
DEMO_DATES ?= 2026-01-01..2026-01-03
DEMO_LAST_DATE ?= 2026-01-03
DEMO_NEXT_DATE ?= 2026-01-04
DEMO_EPOCHS ?= 30
LENS ?= 1

.PHONY: setup browser demo test test-fast bench clean-demo

$(VENV)/.deps-installed:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install $(PIP_FLAGS) -e '.[dev]'
	touch $@

setup: $(VENV)/.deps-installed
	@# re-point the editable install at this checkout (the venv may be shared by clones)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@# lxt (AttnLRP's reference, compared against in the ViT tests) without its dependencies: it pins
	@# bitsandbytes and accelerate, which nothing here uses
	@$(BIN)/python -c "import lxt" 2>/dev/null || $(BIN)/pip install -q --no-deps lxt==2.1

# Debian's chromium for the browser tests of the HTML reports (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; }

demo: setup
	$(BIN)/lakelens generate --out $(DEMO_LAKE) --users $(DEMO_USERS) --days $(DEMO_DAYS) --seed 7
	for day in $(DEMO_DAYS_LIST); do $(BIN)/lakelens run build-sequences --lake $(DEMO_LAKE) --date $$day || exit 1; done
	$(BIN)/lakelens run train-encoder --lake $(DEMO_LAKE) --dates $(DEMO_DATES) --epochs $(DEMO_EPOCHS)
	$(BIN)/lakelens run embed --lake $(DEMO_LAKE) --date $(DEMO_DATE)
	$(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT run_id, job, partition, status, committed_at FROM runs"
	$(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT event_type, count(*) AS in_last_3_events_before_a_transaction FROM (SELECT unnest(event_types[-3:]) AS event_type FROM sequences) GROUP BY ALL ORDER BY 2 DESC LIMIT 10"
	$(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT t.status, count(*) AS txns, round(avg(s.n_events), 1) AS avg_events FROM sequences s JOIN transactions t USING (transaction_id) GROUP BY ALL"
	$(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT top_events[1].event_type AS most_attended_event, count(*) AS sequences, round(avg(top_events[1].weight), 3) AS avg_weight FROM sequence_embeddings GROUP BY ALL ORDER BY 2 DESC LIMIT 8"
	$(BIN)/lakelens run behavior-clusters --lake $(DEMO_LAKE) --date $(DEMO_LAST_DATE)
	$(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT cluster_key, size, labelled, fraud, round(fraud_rate_lower, 2) AS fraud_rate_lower, round(lift, 1) AS lift, round(declined_share, 2) AS declined, top_event_types FROM clusters WHERE flagged ORDER BY fraud_rate_lower DESC"
	$(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT rule_id, sql_predicate, round(precision, 2) AS precision, round(coverage, 2) AS coverage, support, round(fraud_rate, 2) AS fraud_rate FROM cluster_rules ORDER BY rule_id" --max-rows 30
	$(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT cluster_key, narrative FROM clusters WHERE flagged"
	$(BIN)/lakelens evaluate --lake $(DEMO_LAKE) --date $(DEMO_LAST_DATE)
	@echo "--- the next day: an incremental run (new transactions join existing clusters, noise is re-clustered)"
	$(BIN)/lakelens run behavior-clusters --lake $(DEMO_LAKE) --date $(DEMO_NEXT_DATE)
	$(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT cluster_key, size, previous_size, lineage_status, flagged FROM cluster_history WHERE partition = 'dt=$(DEMO_NEXT_DATE)' ORDER BY flagged DESC, size DESC LIMIT 12"
	$(BIN)/lakelens evaluate --lake $(DEMO_LAKE) --date $(DEMO_NEXT_DATE)
	key=$$($(BIN)/lakelens sql --lake $(DEMO_LAKE) --raw -c "SELECT cluster_key FROM flagged_clusters WHERE partition = 'dt=$(DEMO_NEXT_DATE)' LIMIT 1"); \
	  $(BIN)/lakelens review --lake $(DEMO_LAKE) --cluster-key $$key --verdict fraud --reviewer demo --comment "confirmed from the member click-streams"
	$(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT partition, cluster_key, size, lineage_status, latest_verdict, latest_reviewer FROM flagged_clusters"
	$(BIN)/lakelens catalog export --lake $(DEMO_LAKE) --out $(DEMO_LAKE)/catalog.duckdb
	@if [ "$(LENS)" = "1" ]; then \
	  echo "--- semantic lens on the synthetic image world (skip with LENS=0)"; \
	  $(BIN)/lakelens generate-images --out $(DEMO_LAKE) --n 1600 --seed 5 && \
	  $(BIN)/lakelens run semantic-lens --lake $(DEMO_LAKE) --dataset images --config $(DEMO_LAKE)/lens-world.toml && \
	  $(BIN)/lakelens search "striped" --lake $(DEMO_LAKE) --model tiny-cnn-world --top 5 && \
	  $(BIN)/lakelens search "triangle" --lake $(DEMO_LAKE) --model tiny-cnn-world --top 5 && \
	  $(BIN)/lakelens search "corner marker" --lake $(DEMO_LAKE) --model tiny-cnn-world --top 3 && \
	  $(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT class_name, kind, concepts, round(relevance_share, 3) AS relevance_share, flagged, finding FROM audits" && \
	  $(BIN)/lakelens sql --lake $(DEMO_LAKE) -c "SELECT layer, label, count(*) AS components, round(avg(clarity), 2) AS clarity FROM components GROUP BY ALL ORDER BY 1, 3 DESC LIMIT 12"; \
	fi
	@echo "explore: $(BIN)/lakelens sql --lake $(DEMO_LAKE)   (views: flagged_clusters, cluster_members, rules, cluster_history, cluster_reviews, apply_rule('<rule_id>'), clusters, txn_clusters, cluster_rules, sequences, runs, quarantine; see README)"

# the whole suite (what CI runs): real S3, real Ray jobs on generated worlds, headless chromium
test: setup browser
	$(BIN)/python -m pytest -q

# the inner loop: operators, storage, config, catalog and CLI parsing; no Ray jobs (a few minutes)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python bench/generate_speed.py
	$(BIN)/python bench/sequences_throughput.py
	$(BIN)/python bench/embed_throughput.py
	$(BIN)/python bench/detection_quality.py

clean-demo:
	rm -rf $(DEMO_LAKE)
