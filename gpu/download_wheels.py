"""Download the wheels a GPU run carries into .whl/ (git-ignored) and check them (see gpu/README.md).

The GPU machine's image has torch 2.11 (CUDA 13), transformers, safetensors, rich, jinja2 and pytest
but not torchao, compressed-tensors or fire, and it has no network. This script fetches those three
and the requirements of theirs that the image lacks (``gpu/image_packages.txt``), for CPython 3.12
manylinux x86_64, with pip's own ``download``; then it checks that the set is closed (every
``Requires-Dist`` of every wheel, markers evaluated for that machine, is a carried wheel or an image
package, at a version that satisfies it where the version is known) and that the repository plus the
wheels fit the 64 MiB the device machine accepts.
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = "gpu.download_wheels"
LOCK = REPO_ROOT / "requirements" / "lock.cpu.txt"
IMAGE_PACKAGES = REPO_ROOT / "gpu" / "image_packages.txt"
TREE_LIMIT_BYTES = 64 * 2**20  # the working tree plus carried paths the device machine accepts

# name -> version; None: the version pinned in requirements/lock.cpu.txt (what CI tests against).
# torchao: the release for the image's torch 2.11. torchao >= 0.17 builds its extensions against
# torch's stable ABI, and 0.18's __init__ loads them on torch >= 2.11.0 (torchao issue #2919, PR
# #4154: its mxfp8 kernels need ABI features added in 2.11); the PyPI wheel links libcudart.so.13,
# the image's CUDA 13. It is also the CPU lock's version.
WHEELS: dict[str, str | None] = {
    "torchao": "0.18.0",
    "compressed-tensors": None,
    "fire": None,
    "termcolor": None,  # fire
    "loguru": None,  # compressed-tensors
    "pydantic": None,  # compressed-tensors
    "pydantic-core": None,  # pydantic (compiled: the cp312 manylinux wheel)
    "annotated-types": None,  # pydantic
    "typing-inspection": None,  # pydantic
    "typing-extensions": None,  # pydantic needs >= 4.16.0; the image's version is not known
}

PLATFORMS = (  # what the device notes name for that machine's pip; pip matches manylinux_2_N exactly
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# PEP 508 marker environment of the GPU machine's python3.
TARGET_ENVIRONMENT = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_full_version": "3.12.3",
    "python_version": "3.12",
    "sys_platform": "linux",
    "extra": "",
}


def pinned_versions() -> dict[str, str]:
    """WHEELS with each None replaced by the lock's pin."""
    from packaging.utils import canonicalize_name

    from requirements.check_lock import read_lock

    lock = read_lock(str(LOCK))
    versions = {}
    for name, version in WHEELS.items():
        key = canonicalize_name(name)
        if version is None:
            if key not in lock:
                raise ValueError(f"{name} is not pinned in {LOCK.name}: give its version in WHEELS")
            version = lock[key]
        versions[key] = version
    return versions


def read_image_packages(path: Path = IMAGE_PACKAGES) -> dict[str, str | None]:
    """The image's packages: canonical name -> version, or None where the version is not known."""
    from packaging.utils import canonicalize_name

    packages: dict[str, str | None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            packages[canonicalize_name(name)] = version or None
    return packages


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(canonical name, version, Requires-Dist lines) read from the wheel's METADATA."""
    from packaging.utils import canonicalize_name

    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError(f"{path.name} has {len(names)} top-level .dist-info/METADATA files; expected 1")
        message = email.parser.Parser().parsestr(archive.read(names[0]).decode("utf-8"))
    return canonicalize_name(message["Name"]), message["Version"], message.get_all("Requires-Dist") or []


def closure_problems(wheels: list[Path], image: dict[str, str | None]) -> list[str]:
    """Requirements of ``wheels`` (for the GPU machine) that neither a wheel nor the image satisfies."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    carried: dict[str, str] = {}
    problems = []
    requirements = []
    for path in wheels:
        name, version, requires = wheel_metadata(path)
        if name in carried:
            problems.append(f"two wheels of {name} ({carried[name]}, {version}): pip refuses to install both")
        carried[name] = version
        requirements += [(name, Requirement(line)) for line in requires]
    for owner, requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET_ENVIRONMENT):
            continue  # another platform, Python version, or an extra
        needed = canonicalize_name(requirement.name)
        have = carried.get(needed, image.get(needed))
        where = "carried" if needed in carried else "the image's"
        if needed not in carried and needed not in image:
            problems.append(
                f"{owner} needs {requirement}: neither carried nor in the image; add it to WHEELS"
            )
        elif have is not None and not requirement.specifier.contains(have, prereleases=True):
            problems.append(f"{owner} needs {requirement}, but {where} {needed} is {have}")
    return problems


def download(versions: dict[str, str], target: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        *(f"--platform={p}" for p in PLATFORMS),
        "--dest",
        str(target),
        *(f"{name}=={version}" for name, version in versions.items()),
    ]
    print(" ".join(command))
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip download exited {result.returncode} (its output is above)")


def git_files_bytes(*args: str) -> int:
    """Total size of the files ``git ls-files <args>`` lists (that exist)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", *args], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    return sum(
        (REPO_ROOT / name).stat().st_size
        for name in listing.split("\0")
        if name and (REPO_ROOT / name).is_file()
    )


def main(output_dir: str = ".whl", overwrite: bool = False, check_only: bool = False) -> None:
    """Download torchao, compressed-tensors, fire and the requirements the GPU image lacks into OUTPUT_DIR.

    Args:
        output_dir: folder for the wheels (git-ignored .whl/ by default; relative to the repository root).
        overwrite: replace an earlier download in output_dir.
        check_only: download nothing; check the wheels already in output_dir and report sizes.
    """
    from pytorch_scripts_common.cli import UsageError
    from pytorch_scripts_common.outputs import check_output, staged_dir

    target = REPO_ROOT / output_dir
    versions = pinned_versions()
    if check_only:
        if not target.is_dir():
            raise UsageError(f"{target} is not a folder: download first (without --check_only)")
    else:
        check_output(target, overwrite=overwrite, tool=TOOL, flag="output_dir")
        with staged_dir(target, tool=TOOL) as staging:
            download(versions, staging)
    wheels = sorted(target.glob("*.whl"))
    rows = [(wheel_metadata(path)[:2], path) for path in wheels]
    found = {name: version for (name, version), _ in rows}
    problems = [
        f"{name}=={version}: no such wheel in {target}"
        for name, version in versions.items()
        if found.get(name) != version
    ]
    problems += closure_problems(wheels, read_image_packages())
    print(f"{'wheel':<70} {'bytes':>10}")
    for _, path in rows:
        print(f"{path.name:<70} {path.stat().st_size:>10,}")
    wheel_bytes = sum(path.stat().st_size for path in wheels)
    tracked = git_files_bytes()
    untracked = git_files_bytes("--others", "--exclude-standard")
    ignored = (
        subprocess.run(["git", "check-ignore", "-q", output_dir], cwd=REPO_ROOT, check=False).returncode == 0
    )
    if not ignored:
        problems.append(f"{output_dir} is not git-ignored: it would travel twice (as the tree and as carry)")
    total = tracked + untracked + wheel_bytes
    print(
        f"wheels {wheel_bytes:,} + tracked files {tracked:,} + untracked, not ignored {untracked:,} = "
        f"{total:,} bytes ({total / 2**20:.1f} MiB of the {TREE_LIMIT_BYTES // 2**20} MiB that travel)"
    )
    if total > TREE_LIMIT_BYTES:
        problems.append(f"tree + wheels are {total / 2**20:.1f} MiB, over {TREE_LIMIT_BYTES // 2**20} MiB")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(f"error: {len(problems)} problem(s) with the wheels in {target} (above)")
    print(f"ok: {len(wheels)} wheels in {os.path.relpath(target)} close over the image's packages")


if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main)
