# Two commands run the course: `make lab` (JupyterLab) and `make test` (everything, as CI does).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
FAST   ?= 0
# `make site` executes labs in fast mode unless SITE_FAST=0; `make grade` runs submissions in fast
# mode (GRADE_FAST=1): checkers test the students' functions, not training results.
SITE_FAST  ?= 1
GRADE_FAST ?= 1

.PHONY: install lab test unit lint notebooks run clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv if missing and install the course into it

lab: install  ## start JupyterLab on the notebooks
	$(BIN)/jupyter lab notebooks/

test: install lint student site  ## unit tests, then every notebook and its student edition end to end in fast mode, the site in a browser (what CI runs)
	COURSE_FAST=1 MPLBACKEND=agg $(BIN)/python -m pytest -q tests notebooks build/student \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=900 --durations=15

unit: install lint  ## the unit tests alone (no notebooks, no browser): a quick check while you edit course_utils
	COURSE_FAST=1 MPLBACKEND=agg $(BIN)/python -m pytest -q tests --ignore=tests/browser

lint: install  ## ruff (pycodestyle errors, pyflakes, bugbear, import order; settings in pyproject.toml)
	$(BIN)/ruff check .

run: install  ## execute every notebook headless into build/ (FAST=1 for the quick version)
	@mkdir -p build/executed build/html
	COURSE_FAST=$(FAST) $(BIN)/jupyter nbconvert --to notebook --execute \
	  --ExecutePreprocessor.timeout=-1 --output-dir build/executed $(NOTEBOOKS)
	$(BIN)/jupyter nbconvert --to html --output-dir build/html build/executed/*.ipynb

clean:
	rm -rf build .pytest_cache

.PHONY: student slides browser

student: install  ## student editions in build/student/: solutions replaced by their stubs, no outputs
	rm -rf build/student
	$(BIN)/python tools/editions.py student notebooks build/student

slides: install  ## HTML slides in build/slides/ that open offline (EXECUTE=1 runs the labs first, for figures)
	COURSE_FAST=$(FAST) $(BIN)/python tools/editions.py slides notebooks build/slides $(if $(filter 1,$(EXECUTE)),--execute)

browser: install  ## the widget tests alone: JupyterLab driven in Chromium, screenshots in build/screenshots/
	.ci/install-chromium
	COURSE_FAST=1 $(BIN)/python -m pytest -q tests/browser

.PHONY: assignments grade site fork

assignments: install  ## nbgrader course in build/nbgrader/: source/ with nbgrader metadata, release/ by nbgrader generate_assignment
	$(BIN)/python tools/assignments.py release notebooks build/nbgrader

grade: install  ## autograde SUBMISSIONS=folder (one folder per student) with nbgrader; writes build/nbgrader/grades.csv
	@test -n "$(SUBMISSIONS)" || { echo "make grade: say where the notebooks are: make grade SUBMISSIONS=folder/with/one/folder/per/student" >&2; exit 2; }
	COURSE_FAST=$(GRADE_FAST) $(BIN)/python tools/assignments.py grade "$(SUBMISSIONS)" build/nbgrader --src notebooks

site: install  ## the course as a website in build/site/html/ (opens offline); reuses build/executed/ from `make run`
	COURSE_FAST=$(SITE_FAST) $(BIN)/python tools/website.py notebooks build/site --executed build/executed

fork: install  ## point Colab badges, install cells and README to your fork: make fork REPO=owner/name [BRANCH=main]
	@test -n "$(REPO)" || { echo "make fork: name your fork: make fork REPO=owner/name" >&2; exit 2; }
	$(BIN)/python tools/fork.py rewrite "$(REPO)" $(if $(BRANCH),--branch "$(BRANCH)")
