.PHONY: run test setup
setup:
	bash scripts/setup.sh
run: setup
	.venv/bin/python launch.py
test:
	bash scripts/test.sh
