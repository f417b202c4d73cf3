"""Find an LLVM (>= 20) and compile ``apfloat_e8m0.cpp`` into a cached shared library with g++.

Where LLVM comes from, first match wins:

1. ``LLVM_CONFIG=/path/to/llvm-config`` (e.g. Debian's ``/usr/bin/llvm-config-22`` from
   ``llvm-22-dev``): its ``--cxxflags``, ``--libdir``, ``--libs support`` and ``--system-libs``.
2. ``LLVM_DIR=/prefix``: a folder with ``include/llvm/ADT/APFloat.h`` and
   ``lib/libLLVMSupport.a`` (+ ``libLLVMDemangle.a``), e.g. a Debian package unpacked with
   ``dpkg-deb -x``; its ``bin/llvm-config`` is used when present.
3. PyPI's ``mlc-llvm-static`` installed in this venv (located with ``importlib``).

The library lands in ``<cache>/llvm_e8m0/<hash>/libapfloat_e8m0.so`` where ``<cache>`` is
``$PYTORCH_SCRIPTS_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytorch_scripts``, else
``~/.cache/pytorch_scripts``; ``<hash>`` covers the C++ source, the compiler command and the LLVM
location, so an unchanged source is never rebuilt and a changed one always is.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from pytorch_scripts_common.cli import run
from pytorch_scripts_common.outputs import clean_leftovers, staged_file

SOURCE_PATH = Path(__file__).resolve().parent / "apfloat_e8m0.cpp"
LIBRARY_NAME = "libapfloat_e8m0.so"
MIN_LLVM_MAJOR = 20  # Float8E8M0FNU appeared in APFloat in LLVM 20
# What the link needs besides LLVMSupport/LLVMDemangle when llvm-config cannot tell us: APFloat
# itself pulls no compression code, but Support's other objects may reference zlib/zstd.
FALLBACK_SYSTEM_LIBS = ("-lpthread", "-ldl", "-lm", "-lrt")


@dataclasses.dataclass(frozen=True)
class LlvmLocation:
    """Compiler and linker flags for one LLVM installation."""

    origin: str  # human-readable: which rule found it
    version: str
    cxxflags: tuple[str, ...]
    libdir: str
    libs: tuple[str, ...]
    system_libs: tuple[str, ...]


def cache_root() -> Path:
    if os.environ.get("PYTORCH_SCRIPTS_CACHE_DIR"):
        return Path(os.environ["PYTORCH_SCRIPTS_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "pytorch_scripts"
    return Path.home() / ".cache" / "pytorch_scripts"


def _run_llvm_config(llvm_config: str, *args: str) -> str:
    command = [llvm_config, *args]
    # mlc-llvm-static's llvm-config is a Python script; run it with this interpreter so it does not
    # depend on a system python3 on PATH.
    with open(llvm_config, "rb") as f:
        first_line = f.readline()
    if first_line.startswith(b"#!") and b"python" in first_line:
        command = [sys.executable, llvm_config, *args]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise ValueError(
            f"{llvm_config} {' '.join(args)} failed (exit {result.returncode}): {result.stderr.strip()}; "
            "point LLVM_CONFIG at a working llvm-config or unset it"
        )
    return result.stdout.strip()


def _from_llvm_config(llvm_config: str, origin: str) -> LlvmLocation:
    if not os.path.isfile(llvm_config):
        raise ValueError(f"llvm-config not found at {llvm_config!r} ({origin}); fix the path or unset it")
    return LlvmLocation(
        origin=origin,
        version=_run_llvm_config(llvm_config, "--version"),
        cxxflags=tuple(shlex.split(_run_llvm_config(llvm_config, "--cxxflags"))),
        libdir=_run_llvm_config(llvm_config, "--libdir"),
        libs=tuple(shlex.split(_run_llvm_config(llvm_config, "--libs", "support"))),
        system_libs=tuple(shlex.split(_run_llvm_config(llvm_config, "--system-libs"))),
    )


def _version_from_headers(include_dir: Path) -> str:
    config_header = include_dir / "llvm" / "Config" / "llvm-config.h"
    for line in config_header.read_text().splitlines():
        if line.startswith("#define LLVM_VERSION_STRING"):
            return line.split('"')[1]
    raise ValueError(f"no LLVM_VERSION_STRING in {config_header}; is this an LLVM include folder?")


def _from_prefix(prefix: Path, origin: str) -> LlvmLocation:
    include_dir, lib_dir = prefix / "include", prefix / "lib"
    if not (include_dir / "llvm" / "ADT" / "APFloat.h").is_file():
        raise ValueError(
            f"{prefix} ({origin}) has no include/llvm/ADT/APFloat.h; point {origin} at an LLVM prefix"
        )
    if not (lib_dir / "libLLVMSupport.a").is_file():
        raise ValueError(f"{prefix} ({origin}) has no lib/libLLVMSupport.a; a static LLVM is needed")
    return LlvmLocation(
        origin=origin,
        version=_version_from_headers(include_dir),
        cxxflags=(f"-I{include_dir}", "-std=c++17", "-fno-exceptions", "-fno-rtti"),
        libdir=str(lib_dir),
        libs=("-lLLVMSupport", "-lLLVMDemangle"),
        system_libs=FALLBACK_SYSTEM_LIBS,
    )


def find_llvm() -> LlvmLocation:
    """Locate LLVM by the rules in the module docstring; raise ValueError with the fix if none."""
    return _find_llvm(os.environ.get("LLVM_CONFIG", ""), os.environ.get("LLVM_DIR", ""))


@functools.cache  # llvm-config is a Python script here: ~0.3 s per query, 5 queries
def _find_llvm(llvm_config_env: str, llvm_dir_env: str, llvm_dir_name: str = "LLVM_DIR") -> LlvmLocation:
    """``llvm_dir_name``: what the user set the prefix with (LLVM_DIR, or a tool's --llvm_dir)."""
    if llvm_config_env:
        location = _from_llvm_config(llvm_config_env, "LLVM_CONFIG")
    elif llvm_dir_env:
        prefix = Path(llvm_dir_env).expanduser()
        bundled_config = prefix / "bin" / "llvm-config"
        if bundled_config.is_file():
            location = _from_llvm_config(str(bundled_config), f"{llvm_dir_name}/bin/llvm-config")
        else:
            location = _from_prefix(prefix, llvm_dir_name)
    else:
        if importlib.util.find_spec("mlc_llvm_static") is None:
            raise ValueError(
                "no LLVM found: set LLVM_CONFIG=/usr/bin/llvm-config-22 (apt-get install llvm-22-dev), "
                "LLVM_DIR=<prefix with include/ and lib/libLLVMSupport.a>, or pip install mlc-llvm-static"
            )
        import mlc_llvm_static

        location = _from_llvm_config(mlc_llvm_static.get_llvm_config(), "mlc-llvm-static (PyPI)")
    major = int(location.version.split(".")[0])
    if major < MIN_LLVM_MAJOR:
        setting = "LLVM_CONFIG / LLVM_DIR" if llvm_dir_name == "LLVM_DIR" else llvm_dir_name
        raise ValueError(
            f"LLVM {location.version} from {location.origin} is too old: Float8E8M0FNU needs LLVM >= "
            f"{MIN_LLVM_MAJOR}; point {setting} at a newer one"
        )
    return location


def compile_command(location: LlvmLocation, output: Path) -> list[str]:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise ValueError(f"C++ compiler {compiler!r} not found; install g++ or set CXX")
    return [
        compiler,
        *location.cxxflags,
        "-O2",
        "-DNDEBUG",
        "-fPIC",
        "-shared",
        "-Wall",
        "-Wextra",
        "-o",
        str(output),
        str(SOURCE_PATH),
        f"-L{location.libdir}",
        *location.libs,
        *location.system_libs,
        # Keep LLVM's symbols private to this .so: torch and others may load a different LLVM.
        "-Wl,--exclude-libs,ALL",
    ]


def library_path(location: LlvmLocation | None = None) -> Path:
    """Where the library for the current source and LLVM lives (it may not be built yet)."""
    location = location or find_llvm()
    key_material = "\n".join(
        [
            hashlib.sha256(SOURCE_PATH.read_bytes()).hexdigest(),
            shlex.join(compile_command(location, Path("OUT"))),
            location.version,
        ]
    )
    digest = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    return cache_root() / "llvm_e8m0" / digest / LIBRARY_NAME


def build_library(force: bool = False, verbose: bool = False, llvm_dir: str | None = None) -> Path:
    """Compile the library unless an up-to-date one is cached; return its path.

    ``llvm_dir`` builds against that LLVM prefix instead of the LLVM_CONFIG / LLVM_DIR / PyPI rules.
    Concurrent callers (two sweep workers, pytest-xdist) serialise on a lock file; the compiler
    writes to a temporary name next to the library (``pytorch_scripts_common.outputs.staged_file``)
    that is moved into place only when the compiler succeeds, so a half-written .so is never loaded.
    """
    location = _find_llvm("", llvm_dir, "--llvm_dir") if llvm_dir else find_llvm()
    target = library_path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "build.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if target.is_file() and not force:
            return target
        clean_leftovers(target)  # the temp file of a build that was killed
        with staged_file(target) as staging:
            command = compile_command(location, staging)
            if verbose:
                print(f"LLVM {location.version} from {location.origin}")
                print(shlex.join(command))
            result = subprocess.run(command, check=False, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(
                    f"compiling {SOURCE_PATH.name} failed:\n{shlex.join(command)}\n{result.stderr}"
                )
    return target


def fetch_debian_llvm(major: int) -> Path:
    """Download Debian's ``llvm-<major>-dev`` (apt-get download, no root) and unpack it into the cache.

    Returns the LLVM prefix (``.../usr/lib/llvm-<major>``) to use as ``LLVM_DIR``; a finished unpack
    is reused. Needs ``apt-get`` and ``dpkg-deb`` (Debian/Ubuntu) and a reachable Debian mirror.
    """
    if major < MIN_LLVM_MAJOR:
        raise ValueError(
            f"fetch_debian={major}: Float8E8M0FNU needs LLVM >= {MIN_LLVM_MAJOR}: "
            f"pass --fetch_debian={MIN_LLVM_MAJOR} or later"
        )
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ValueError(
                f"fetch_debian needs {tool} (a Debian system); set LLVM_DIR / LLVM_CONFIG instead"
            )
    folder = cache_root() / "llvm_e8m0" / f"debian-llvm-{major}-dev"
    prefix = folder / "root" / "usr" / "lib" / f"llvm-{major}"
    if (folder / "unpacked.ok").is_file():
        return prefix
    folder.mkdir(parents=True, exist_ok=True)
    package = f"llvm-{major}-dev"
    try:
        download = subprocess.run(
            ["apt-get", "download", package], cwd=folder, capture_output=True, text=True, check=False
        )
        debs = sorted(folder.glob(f"{package}_*.deb"))
        if download.returncode != 0 or not debs:
            raise ValueError(
                f"apt-get download {package} failed: {download.stderr.strip()}; try apt-get update first"
            )
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(folder / "root")], check=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # unfinished: no unpacked.ok, nothing to keep
        raise
    (folder / "unpacked.ok").write_text(debs[-1].name)
    debs[-1].unlink()  # ~50 MB; the unpacked tree (~450 MB) is what the build uses
    return prefix


def main(force: bool = False, verbose: bool = True, fetch_debian: int = 0) -> None:
    """Build (or find cached) libapfloat_e8m0.so and print its path.

    Args:
        force: rebuild even when a library for this source and LLVM is cached.
        verbose: print the LLVM origin/version and the compiler command.
        fetch_debian: if non-zero, download Debian's llvm-<N>-dev into the cache and build against it.
    """
    if fetch_debian:
        os.environ["LLVM_DIR"] = str(fetch_debian_llvm(fetch_debian))
        os.environ.pop("LLVM_CONFIG", None)
    path = build_library(force=force, verbose=verbose)
    print(path)


if __name__ == "__main__":
    run(main)
