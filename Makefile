.PHONY: install demo test check bench clean

install:  ## venv + Debian packages (as root)
	scripts/install

demo:  ## the whole system on a private Mosquitto + PostgreSQL, with simulated devices
	scripts/demo

test:  ## every test, against a private stack the tests start themselves
	scripts/test

check:  ## ruff + mypy
	scripts/check

bench:  ## ingest, alert latency and query benchmarks (figures in docs/benchmarks.md)
	scripts/install
	.venv/bin/python -m bench.ingest_bench
	.venv/bin/python -m bench.alert_latency_bench
	.venv/bin/python -m bench.readings_query_bench

clean:  ## stop the local stack and remove its state
	-.venv/bin/pulsewire stack down
	rm -rf .pulsewire
