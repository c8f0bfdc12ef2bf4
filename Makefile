.PHONY: run test setup
# make run [PORT=7861]: the editor on another port (GRADIO_SERVER_PORT=... works too)
PORT ?=
setup:
	bash scripts/setup.sh
run: setup
	.venv/bin/python launch.py $(if $(PORT),--port $(PORT))
test:
	bash scripts/test.sh
