"""The set-up a newcomer runs is honest: the README names the Python that pyproject.toml requires,
the set-up stops with a clear message on an older one, the main job (tools/run_demo.sh) installs no
browser and never asks for a password, and only the tests' set-up installs the browser.

The scripts run here in a copy of the repository's scripts with fake ``python``, ``apt-get``,
``sudo`` and ``id`` on PATH that record how they were called: nothing is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["run_demo.sh", "run_tests.sh", "setup_env.sh", "setup_browser.sh"]
# What installing a browser, or becoming root for it, looks like in a script.
BROWSER_INSTALL = re.compile(r"\bapt-get\b|\bsudo\b|chromium|playwright install")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the set-up scripts are bash scripts")


def required_python() -> str:
    """The minimum of pyproject.toml's requires-python, e.g. "3.10"."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(REPO_ROOT / "pyproject.toml", "rb") as handle:
        requires = tomllib.load(handle)["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+\.\d+)", requires)
    assert match, f"requires-python is {requires!r}; the set-up reads only the form '>=X.Y'"
    return match.group(1)


def readme_section(title: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def scripts_run_by(script: str) -> list[Path]:
    """The script and every tools/ script it runs, followed through the shell scripts it calls
    (comment lines aside: a comment naming a script runs nothing)."""
    seen: list[Path] = []
    pending = [REPO_ROOT / "tools" / script]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.append(path)
        if path.suffix != ".sh":
            continue
        for line in code_lines(path):
            pending += [REPO_ROOT / name for name in re.findall(r"tools/[\w/]+\.(?:sh|py)\b", line)]
    return seen


def code_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.strip().startswith("#")]


def test_readme_states_the_python_version_pyproject_requires():
    section = readme_section("The two commands")
    stated = set(re.findall(r"[Pp]ython ?(\d+\.\d+)", section))
    assert stated == {required_python()}, (
        f"README's 'The two commands' names Python {sorted(stated)}; pyproject.toml requires {required_python()}"
    )
    assert "installs no browser" in section and "never asks for a password" in section


def test_the_demo_runs_no_script_that_installs_a_browser():
    demo_scripts = scripts_run_by("run_demo.sh")
    assert REPO_ROOT / "tools" / "setup_env.sh" in demo_scripts  # the walk does reach the set-up
    for path in demo_scripts:
        for line in code_lines(path):
            assert not BROWSER_INSTALL.search(line), f"{path.relative_to(REPO_ROOT)}: {line.strip()}"


def test_the_tests_set_up_still_installs_the_browser():
    found = [line for path in scripts_run_by("run_tests.sh") for line in code_lines(path)
             if re.search(r"apt-get install .*chromium", line)]
    assert found, "tools/run_tests.sh no longer installs chromium for the browser test"


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A copy of the set-up scripts and the files they read, with recording fakes in bin/."""
    (tmp_path / "tools").mkdir()
    for name in SCRIPTS:
        shutil.copy2(REPO_ROOT / "tools" / name, tmp_path / "tools" / name)
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy2(REPO_ROOT / name, tmp_path / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A Python of the version in FAKE_PYTHON_VERSION: it says its version, makes a venv by copying
    # itself, and records every other call (pip, the set-up and demo scripts) without running it.
    fake(bin_dir / "python", """
        case "$*" in
            *sys.version_info*) echo "$FAKE_PYTHON_VERSION" ;;
            --version) echo "Python $FAKE_PYTHON_VERSION" ;;
            "-m venv "*) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
            *) echo "python $*" >> "$CALLS" ;;
        esac
    """)
    shutil.copy2(bin_dir / "python", bin_dir / "python3")  # a script that ignores PYTHON still installs nothing
    for name in ("apt-get", "sudo"):
        fake(bin_dir / name, f'echo "{name} $*" >> "$CALLS"; [ "$1" != -n ] || exit 1  # sudo -n: password needed')
    fake(bin_dir / "id", 'echo "$FAKE_UID"')  # the scripts ask only `id -u`
    return tmp_path


def fake(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + "\n".join(line.strip() for line in body.strip().splitlines()) + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run(sandbox: Path, script: str, python_version: str, uid: int = 0, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "PATH": f"{sandbox / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": str(sandbox / "bin" / "python"),
        "FAKE_PYTHON_VERSION": python_version,
        "FAKE_UID": str(uid),
        "CALLS": str(sandbox / "calls.log"),
        "LORA_LAB_CHROMIUM": str(sandbox / "no-chromium-here"),
        **env,
    }
    return subprocess.run(["bash", str(sandbox / "tools" / script)], env=environment, capture_output=True, text=True,
                          timeout=60)


def calls(sandbox: Path) -> list[str]:
    log = sandbox / "calls.log"
    return log.read_text().splitlines() if log.is_file() else []


def test_set_up_stops_on_a_python_older_than_pyproject_requires(sandbox: Path):
    major, minor = map(int, required_python().split("."))
    result = run(sandbox, "run_demo.sh", f"{major}.{minor - 1}")
    assert result.returncode != 0
    assert f"needs Python {required_python()} or newer" in result.stderr
    assert "PYTHON=" in result.stderr  # how to point it at another interpreter
    assert not (sandbox / ".venv").exists() and calls(sandbox) == []


def test_demo_on_the_required_python_installs_no_browser_and_asks_no_password(sandbox: Path):
    result = run(sandbox, "run_demo.sh", required_python(), uid=1000)
    assert result.returncode == 0, result.stderr
    made = calls(sandbox)
    assert any("tools/demo.py" in call for call in made)  # it got through the set-up to the demo
    assert not [call for call in made if call.startswith(("apt-get", "sudo"))]


def test_browser_set_up_without_root_only_tries_sudo_without_a_password(sandbox: Path):
    result = run(sandbox, "setup_browser.sh", required_python(), uid=1000)
    assert result.returncode == 0, result.stderr  # it says so and the tests go on
    assert calls(sandbox) == ["sudo -n true"]
    assert "the browser test will not run" in result.stderr


def test_browser_set_up_as_root_installs_debians_chromium(sandbox: Path):
    result = run(sandbox, "setup_browser.sh", required_python(), uid=0)
    assert result.returncode == 0, result.stderr
    made = calls(sandbox)
    assert made[0] == "apt-get update -qq" and made[-1].startswith("apt-get install -y -qq chromium")
