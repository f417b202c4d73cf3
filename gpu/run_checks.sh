#!/usr/bin/env bash
# The one command of a GPU run (gpu/README.md): install the carried wheels (.whl/*.whl) into a temp
# site folder, put it first on PYTHONPATH, then run gpu/run_checks.py, stopped after HARD_LIMIT_S.
#
#   bash gpu/run_checks.sh OUT_DIR [flags of gpu/run_checks.py, e.g. --cpu=True --quick=True]
#
# Environment: PYTHON (default python3), WHEEL_DIR (default .whl), HARD_LIMIT_S (default 480: the
# driver gets SIGTERM then, packs what it has and exits 143; SIGKILL 20 s later). The exit status is
# the driver's (not timeout's 124, which the device tool would read as its own time limit).
# If the driver dies without writing OUT_DIR/summary.json, this script writes a minimal one.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "error: no output folder given: run bash gpu/run_checks.sh OUT_DIR [flags of gpu/run_checks.py]" >&2
    exit 2
fi
out=$1
shift
python=${PYTHON:-python3}
wheel_dir=${WHEEL_DIR:-.whl}
hard_limit_s=${HARD_LIMIT_S:-480}
mkdir -p "$out" || exit 2

site=$(mktemp -d "${TMPDIR:-/tmp}/pytorch_scripts_site.XXXXXX") || exit 1
install_log="$site.install.log"
trap 'rm -rf "$site" "$install_log"' EXIT
shopt -s nullglob
wheels=("$wheel_dir"/*.whl)
shopt -u nullglob
install_rc=-1
if [ ${#wheels[@]} -gt 0 ]; then
    echo "installing ${#wheels[@]} wheels from $wheel_dir/ into $site"
    "$python" -m pip install --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --target "$site" "${wheels[@]}" >"$install_log" 2>&1
    install_rc=$?
    [ $install_rc -eq 0 ] || { echo "pip install failed (exit $install_rc):" >&2; tail -n 20 "$install_log" >&2; }
else
    echo "no wheels in $wheel_dir/: using the packages already installed" | tee "$install_log"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

timeout --preserve-status --signal=TERM --kill-after=20 "$hard_limit_s" "$python" -m gpu.run_checks --output_dir="$out" \
    --wheel_site="$site" --install_log="$install_log" --install_rc="$install_rc" "$@"
rc=$?
if [ ! -f "$out/summary.json" ]; then
    echo "error: gpu/run_checks.py exited $rc without writing $out/summary.json; writing a minimal one" >&2
    cp "$install_log" "$out/install_wheels.log"
    printf '{"tool": "gpu/run_checks.sh", "driver_exit": %d, "install_rc": %d, "ended": "driver died: see the run output and install_wheels.log"}\n' \
        "$rc" "$install_rc" >"$out/summary.json"
fi
exit $rc
