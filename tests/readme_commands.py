"""The shell commands a README shows, for the tests that keep each README's commands honest."""

from __future__ import annotations

import re
import shlex


def bash_block_commands(text: str, prefixes: str | tuple[str, ...]) -> list[list[str]]:
    """Commands of the ```bash blocks in ``text`` that start with one of ``prefixes``, shlex-split.

    Backslash continuations are joined first, so flags on continuation lines are seen; a comment is
    a ``#`` that starts a word (bash's rule), so ``--x=a#b`` stays one argument.
    """
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
            if line.startswith(prefixes):
                commands.append(shlex.split(line))
    return commands
