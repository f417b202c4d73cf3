"""The README command extractor and the one-style check every README's commands pass."""

import shlex

import pytest

from tests.readme_commands import (
    REPO_ROOT,
    bash_block_commands,
    command_problems,
    markdown_files,
    readme_commands,
    readme_problems,
    simple_commands,
)

README = """\
Prose mentions `.venv/bin/python tool.py --inline` (not a block: not a command).

```bash
# a comment line
.venv/bin/python tool.py --a 1  # trailing comment
.venv/bin/python tool.py --pattern='x#y' \\
    --continued 2
torchrun --nproc_per_node 2 other.py
```

```python
.venv/bin/python tool.py --not-bash
```
"""


def test_commands_from_bash_blocks_only_with_continuations_joined_and_comments_dropped():
    assert bash_block_commands(README, ".venv/bin/python tool.py") == [
        [".venv/bin/python", "tool.py", "--a", "1"],
        [".venv/bin/python", "tool.py", "--pattern=x#y", "--continued", "2"],
    ]
    assert bash_block_commands(README, ("torchrun", ".venv/bin/torchrun")) == [
        ["torchrun", "--nproc_per_node", "2", "other.py"]
    ]
    assert bash_block_commands(README, "python") == []


def test_every_readme_command_is_a_module_run_with_its_entry_points_flags():
    readmes = markdown_files()
    assert (
        REPO_ROOT / "README.md" in readmes and REPO_ROOT / "graph_viz" / "fixtures" / "README.md" in readmes
    )
    commands = {path: readme_commands(path) for path in readmes}
    assert sum(map(len, commands.values())) >= 100, "the extractor found too few README commands"
    for path in readmes:
        if "```bash" in path.read_text(encoding="utf-8"):
            assert commands[path], f"{path.relative_to(REPO_ROOT)}: bash blocks but no command found"
    problems = [problem for path in readmes for problem in readme_problems(path)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (
            ".venv/bin/python graph_viz/main.py a b",
            "script form `graph_viz/main.py`: write `.venv/bin/python -m graph_viz.main`",
        ),
        (".venv/bin/python test_ao.py", "write `.venv/bin/python -m test_ao`"),
        ("python -m test_ao", "run the clone's interpreter, `.venv/bin/python`"),
        (".venv/bin/python -m graph_viz.nonexistent", "no module graph_viz.nonexistent"),
        (".venv/bin/python -m no_such_package_here", "no module no_such_package_here"),
        (".venv/bin/python -m graph_viz", "no module graph_viz (no graph_viz.py)"),
        (".venv/bin/python -m pytorch_scripts_common.cli", "has no `run(main)`"),
        (".venv/bin/python -m test_ao --num_runz=3", "--num_runz: test_ao.main has no such parameter"),
        (".venv/bin/python -m test_ao --num_runs 3", "--num_runs 3: write --num_runs=<value>"),
        (".venv/bin/python -m test_ao --compile yes", "--compile yes: write --compile=<value>"),
        (".venv/bin/python -m test_ao --model", "--model: write --model=<value>"),
        (".venv/bin/python -m test_ao --model --nope=1", "--nope: test_ao.main has no such parameter"),
        (
            ".venv/bin/python -m test_ao stray",
            "positional stray: write the optional parameters as --flag=value",
        ),
        (".venv/bin/python -m graph_viz.main only_a_log", "--output_dir is required"),
        (
            ".venv/bin/python -m graph_viz.main graph_viz/fixtures/nope.log /tmp/o",
            "graph_viz/fixtures/nope.log does not exist",
        ),
        (".venv/bin/python -m pytest tests/no_such_folder", "tests/no_such_folder does not exist"),
        (".venv/bin/python some_program.py", "a program of the reader's own runs with `python`"),
        (".venv/bin/torchrun --nproc_per_node 2 dp2ep/main.py", "script form `dp2ep/main.py`"),
        ("torchrun --nproc_per_node 2 -m dp2ep.main", "run the clone's launcher, `.venv/bin/torchrun`"),
        (".venv/bin/torchrun --nproc 2 -m dp2ep.main", "--nproc is not a torchrun option"),
        (".venv/bin/torchrun --nproc_per_node 2 -m dp2ep.main --top_k 2", "--top_k 2: write --top_k=<value>"),
        ("A=1 .venv/bin/python graph_viz/main.py a b > log 2>&1", "script form `graph_viz/main.py`"),
        ("cd x && .venv/bin/python test_ao.py | tee log", "write `.venv/bin/python -m test_ao`"),
    ],
)
def test_checker_names_what_breaks_the_one_style(command, problem):
    for words in simple_commands(command):
        if (found := command_problems(words)) != []:
            assert any(problem in line for line in found), found
            return
    raise AssertionError(f"no problem found in {command!r}")


@pytest.mark.parametrize(
    "command",
    [
        ".venv/bin/python -m test_ao --model=odd_shapes --configs=int4wo,intx4wo --compile --nocheck_sqnr",
        ".venv/bin/python -m graph_viz.main graph_viz/fixtures/logs/transformer_train.log /tmp/o --overwrite",
        ".venv/bin/python -m dp2ep.main --help",
        ".venv/bin/torchrun --nnodes 2 --nproc_per_node 2 --rdzv_endpoint=h:1 -m dp2ep.main --top_k=2",
        "TORCH_LOGS=output_code python train.py 2> output_code.log",
        'python -c "import torch"',
        "python3.11 -m venv /tmp/v && /tmp/v/bin/python -m graph_viz.make_sample_logs --output_dir=/tmp/l",
        ".venv/bin/python -m pytest tests/graph_viz -m 'not slow'",
    ],
)
def test_checker_passes_the_one_style(command):
    assert [problem for words in simple_commands(command) for problem in command_problems(words)] == []


def test_checker_accepts_the_aliases_run_names(tmp_path, monkeypatch):
    package = tmp_path / "aliased_tool"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text(
        "ALIASES = {'model_name': 'model'}\n\n\n"
        "def main(model: str, overwrite: bool = False):\n"
        '    """Args: model, overwrite."""\n\n\n'
        'if __name__ == "__main__":\n'
        "    from pytorch_scripts_common.cli import run\n\n"
        "    run(main, aliases=ALIASES)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ok = shlex.split(".venv/bin/python -m aliased_tool.main --model_name=m --overwrite")
    assert command_problems(ok, root=tmp_path) == []
    unknown = shlex.split(".venv/bin/python -m aliased_tool.main --model_path=m")
    assert command_problems(unknown, root=tmp_path) == [
        "--model_path: aliased_tool.main.main has no such parameter",
        "--model is required",
    ]


def test_simple_commands_split_at_operators_and_drop_redirections_and_assignments():
    assert simple_commands("A=1 B=2 python x.py > out.log 2>&1 && cat out.log | grep y") == [
        ["python", "x.py"],
        ["cat", "out.log"],
        ["grep", "y"],
    ]
    assert simple_commands("env C=3 .venv/bin/python -m m --a=1 2>err.txt") == [
        [".venv/bin/python", "-m", "m", "--a=1"]
    ]


def test_readme_commands_keep_line_numbers_of_blocks_and_inline_code(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README + "\nRun `.venv/bin/python -m test_ao --model=small` or `ruff check`.\n")
    assert readme_commands(readme) == [
        (1, [".venv/bin/python", "tool.py", "--inline"]),  # inline code that starts with an interpreter
        (5, [".venv/bin/python", "tool.py", "--a", "1"]),
        (6, [".venv/bin/python", "tool.py", "--pattern=x#y", "--continued", "2"]),
        (8, ["torchrun", "--nproc_per_node", "2", "other.py"]),
        (15, [".venv/bin/python", "-m", "test_ao", "--model=small"]),
    ]
