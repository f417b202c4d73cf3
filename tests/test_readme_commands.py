"""The README command extractor the per-folder README tests share."""

from tests.readme_commands import bash_block_commands

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
