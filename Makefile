# certfleet developer entry points. `make help` lists them.
# Go from /usr/local/go is used when `go` is not on PATH.
export PATH := $(PATH):/usr/local/go/bin
SHELL := /bin/bash
GO        ?= go
TESTFLAGS ?=
CACHE     ?= $(or $(CERTFLEET_CACHE_DIR),$(HOME)/.cache/certfleet)
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(CACHE)/bin/staticcheck-$(STATICCHECK_VERSION)

.DEFAULT_GOAL := help
.PHONY: help build run test test-unit chaos friendliness testenv-up testenv-down testenv-status migrate lint bench

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build the commands into ./bin: certfleet (operator tool), issuer-worker, scheduler
	$(GO) build -o bin/ ./cmd/certfleet ./cmd/issuer-worker ./cmd/scheduler

run: testenv-up migrate ## end-to-end demo: 2 issuer-workers issue a 300-certificate fleet on the local stack (leaves the stack running; first run on a fresh machine about 8 minutes)
	@echo "==> building demo, issuer-worker and scheduler into ./bin (the first build compiles every dependency: a few minutes on 2 cores)"
	$(GO) build -o bin/ ./cmd/demo ./cmd/issuer-worker ./cmd/scheduler
	./bin/demo -bin bin $(DEMOFLAGS)

# The chaos scenarios restart Kafka and the database of the shared stack, so
# they run alone, after every other package.
PKGS_NO_CHAOS = $$($(GO) list ./... | grep -v '/chaos$$')

test: testenv-up ## unit + integration tests against testenv with -race, then the CI-sized chaos scenarios (starts the stack; leaves it running)
	$(GO) test -race -count=1 -p 2 $(TESTFLAGS) $(PKGS_NO_CHAOS)
	CERTFLEET_CHAOS=ci $(GO) test -count=1 -timeout 30m -v $(TESTFLAGS) ./chaos

chaos: testenv-up ## full chaos scenarios: worker kills, Kafka and database restarts, CA 429/5xx, 10,000 hostile records, a 2,000-certificate incident reissue (about 46 minutes)
	mkdir -p bench-results && rm -f bench-results/chaos.jsonl
	CERTFLEET_CHAOS=full CERTFLEET_CHAOS_RESULTS=$(CURDIR)/bench-results/chaos.jsonl $(GO) test -count=1 -timeout 120m -v $(TESTFLAGS) ./chaos

friendliness: testenv-up ## CA-friendliness run: 2,000 jobs, workers at 100% of Let's Encrypt-shaped limits scaled to minutes; 0 429s, utilisation (about 18 minutes)
	CERTFLEET_FRIENDLINESS=1 $(GO) test -count=1 -timeout 60m -v -run TestCAFriendliness $(TESTFLAGS) ./chaos

test-unit: ## pure unit tests only, no stack (CERTFLEET_TESTENV=off skips integration tests)
	CERTFLEET_TESTENV=off $(GO) test -race -count=1 $(TESTFLAGS) ./...

testenv-up: ## start Kafka, the database and Pebble (idempotent); settings in .testenv/env
	@echo "==> starting the local stack: go run ./cmd/testenv up (on a fresh machine it first downloads Go modules, the Kafka jars and Pebble: minutes)"
	$(GO) run ./cmd/testenv up

testenv-down: ## stop what testenv started and remove its data
	$(GO) run ./cmd/testenv down

testenv-status: ## show each testenv service
	$(GO) run ./cmd/testenv status

migrate: testenv-up ## apply database migrations to the testenv database
	@echo "==> applying database migrations: go run ./cmd/certfleet migrate"
	set -a; . $${CERTFLEET_TESTENV_DIR:-./.testenv}/env; set +a; $(GO) run ./cmd/certfleet migrate

lint: $(STATICCHECK) ## go vet and staticcheck
	$(GO) vet ./...
	$(STATICCHECK) ./...

$(STATICCHECK):
	mkdir -p $(CACHE)/bin/tmp
	GOBIN=$(CACHE)/bin/tmp $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(CACHE)/bin/tmp/staticcheck $@

BENCHTIME ?= 1s
# The pipeline benchmarks count certificates per side: 1,000, three times
# (the two sides alternating which goes first), then the CertMagic peer and
# the fleet-concurrency row. CertMagic's defaults obtain about one certificate
# a second (its internal throttle), so that row alone takes about as many
# seconds as PIPELINE_BENCHTIME certificates; the whole target about 30
# minutes on 2 cores. PIPELINE_BENCHTIME=50x PIPELINE_RUNS=1 for a quick look.
PIPELINE_BENCHTIME ?= 1000x
PIPELINE_RUNS ?= 3
# The CertMagic peer: its own module (bench/certmagic), built here.
CERTMAGIC_PEER = $(CURDIR)/bin/certmagic-peer
BENCH_SETTINGS = go test -bench . -benchmem -count=1 -benchtime=$(BENCHTIME), ./pipeline with -benchtime=$(PIPELINE_BENCHTIME) (certificates per side) and $(PIPELINE_RUNS) runs of pipeline vs acmez loop; \
  packages one at a time; both sides of a comparison at equal concurrency (pipeline, acmez loop and CertMagic $$(awk '$$1 == "require" && $$2 ~ /certmagic$$/ {print $$3}' bench/certmagic/go.mod) 6 orders in flight, fleet 2 workers x 24 vs acmez loop 48, limiter and naive 16 callers, events 2 publishers); \
  testenv on loopback ($$(. $${CERTFLEET_TESTENV_DIR:-./.testenv}/env; echo $$CERTFLEET_DB), Kafka, Pebble)
# Benchmarks start from a fresh Pebble: a long-lived one is slower for both
# sides of a comparison (its reuse lookup scans every authorization it made).
bench: testenv-up ## run every benchmark against its baseline of the same run (on a fresh Pebble), CertMagic beside the pipeline; one table with the machine and settings, raw output and JSON in bench-results/ (about 30 minutes)
	$(GO) run ./cmd/testenv restart pebble
	mkdir -p bench-results bin
	cd bench/certmagic && $(GO) build -o $(CERTMAGIC_PEER) .
	set -o pipefail; { $(GO) test -run '^$$' -bench . -benchmem -benchtime=$(BENCHTIME) -count=1 -timeout 30m $$($(GO) list ./... | grep -v '/pipeline$$'); \
	  CERTFLEET_BENCH_CERTMAGIC=$(CERTMAGIC_PEER) CERTFLEET_BENCH_RUNS=$(PIPELINE_RUNS) \
	  $(GO) test -run '^$$' -bench . -benchmem -benchtime=$(PIPELINE_BENCHTIME) -count=1 -timeout 120m ./pipeline; } \
	  | tee bench-results/raw.txt \
	  | $(GO) run ./cmd/benchtable -json bench-results/bench.json -settings "$(BENCH_SETTINGS)"
