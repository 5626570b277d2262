"""pyproject.toml and environment.yml must list the same packages."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pip_lines_of_environment_yml():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    return [line.strip()[2:] for line in lines[start + 1:] if line.strip().startswith("- ")]


def test_environment_yml_lists_the_same_requirements_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    listed = {line for line in _pip_lines_of_environment_yml() if line != "-e ."}
    assert listed == wanted


def test_the_makefile_pins_the_cpu_torch_that_pyproject_admits():
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"TORCH_SPEC\s*\?=\s*torch==(\d+)\.(\d+)", makefile)
    assert pinned, "Makefile must pin a torch version by default"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    low = next(d for d in project["dependencies"] if d.startswith("torch"))
    major, minor = (int(x) for x in re.search(r">=(\d+)\.(\d+)", low).groups())
    assert (int(pinned[1]), int(pinned[2])) >= (major, minor)


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_every_script_and_benchmark_compiles_and_make_pretrain_parses_its_options():
    """Scripts that no other test runs (make pretrain takes minutes) must at least parse:
    a syntax error in scripts/pretrain.py once went unnoticed."""
    import py_compile
    import subprocess
    import sys

    for path in sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")):
        py_compile.compile(str(path), doraise=True)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain.py"), "--help"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "--threads" in proc.stdout and "--epochs" in proc.stdout
