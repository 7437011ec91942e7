# The two commands of the README. Both set up .venv (scripts/bootstrap.sh) before running.
.PHONY: experiment test setup

setup:
	@bash scripts/bootstrap.sh

# The main job on the embedded default model.
experiment: setup
	@bash scripts/main_job.sh

# The test suite (what CI runs).
test: setup
	@bash scripts/test.sh
