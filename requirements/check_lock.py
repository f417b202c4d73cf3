"""Check that the running environment has exactly the versions pinned in a lock file.

Usage: python requirements/check_lock.py requirements/lock.cpu.txt
Exit status 1 and one line per problem when a pinned distribution is missing or at another version.
"""

import importlib.metadata
import re
import sys

from packaging.utils import canonicalize_name
from packaging.version import Version


def read_lock(path: str) -> dict[str, str]:
    pins = {}
    with open(path, encoding="utf-8") as f:
        for line_number, raw in enumerate(f, start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            if match is None:
                raise ValueError(f"{path}:{line_number}: expected 'name==version', got {line!r}")
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def main(path: str) -> int:
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()
    }
    problems = []
    for name, version in sorted(read_lock(path).items()):
        if name not in installed:
            problems.append(f"{name}=={version}: not installed")
        elif Version(installed[name]) != Version(version):
            problems.append(f"{name}=={version}: installed {installed[name]}")
    for problem in problems:
        print(f"check_lock: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python requirements/check_lock.py LOCK_FILE")
    sys.exit(main(sys.argv[1]))
