#!/usr/bin/env bash
# Build vLLM from a source checkout against the PyTorch that is already installed, and leave the
# checkout exactly as it was (tracked edits, staged edits and untracked files), whatever happens.
#
# Usage: build_vllm_with_existing_torch.sh [VLLM_DIR] [--target cpu|cuda] [--dry-run]
#                                          [--editable|--no-editable] [-h|--help]
#
#   VLLM_DIR        a git checkout of vLLM (default: the current directory)
#   --target        cpu or cuda (default: cuda when the installed torch sees a GPU, else cpu);
#                   cpu sets VLLM_TARGET_DEVICE=cpu
#   --dry-run       validate, then print every step without changing anything or building
#   --editable      pip install -e . (default);  --no-editable: pip install .
#
# Environment: PYTHON (default: python3) is the interpreter whose torch is used and into which
# vLLM is installed; MAX_JOBS (default: nproc) is passed to the build.
#
# How local work is kept safe: when `git status` shows anything (tracked, staged or untracked
# files), it is saved with `git stash push --include-untracked` and immediately re-applied with
# `--index`, so the build sees the developer's changes while the stash entry is a backup. After
# the build -- on success, on failure and on SIGINT/SIGTERM -- the tracked files are reset to HEAD
# (undoing use_existing_torch.py's edits), the stashed untracked files are removed and the stash is
# popped with --index, which restores the tree exactly. Ignored files (build outputs such as the
# compiled vllm/_C*.so an editable install needs) are never touched. If the restore cannot be done
# cleanly (HEAD moved during the build, or the pop conflicts), the stash is kept and the exact
# commands to recover are printed; the script exits non-zero.
set -euo pipefail

readonly STASH_MESSAGE_PREFIX="build_vllm_with_existing_torch: saved local changes"

log() { printf '[build_vllm] %s\n' "$*" >&2; }
die() {
    printf '[build_vllm] error: %s\n' "$*" >&2
    exit 2
}

usage() {
    sed -n '5,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------- arguments
vllm_dir=""
target=""
dry_run=0
editable=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target)
            [[ $# -ge 2 ]] || die "--target needs a value: cpu or cuda"
            target=$2
            shift 2
            ;;
        --target=*)
            target=${1#--target=}
            shift
            ;;
        --dry-run) dry_run=1 && shift ;;
        --editable) editable=1 && shift ;;
        --no-editable) editable=0 && shift ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*) die "unknown option '$1'; see --help" ;;
        *)
            [[ -z "$vllm_dir" ]] || die "more than one VLLM_DIR given ('$vllm_dir' and '$1')"
            vllm_dir=$1
            shift
            ;;
    esac
done
vllm_dir=${vllm_dir:-$PWD}
if [[ -n "$target" && "$target" != cpu && "$target" != cuda ]]; then
    die "--target must be cpu or cuda, got '$target'"
fi

# ---------------------------------------------------------------- validation (read-only)
[[ -d "$vllm_dir" ]] || die "VLLM_DIR '$vllm_dir' is not a directory"
vllm_dir=$(cd "$vllm_dir" && pwd)
git -C "$vllm_dir" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
    die "'$vllm_dir' is not a git checkout; clone vLLM (git clone https://github.com/vllm-project/vllm) and pass its path"
toplevel=$(git -C "$vllm_dir" rev-parse --show-toplevel)
[[ "$toplevel" == "$vllm_dir" ]] || die "'$vllm_dir' is inside the checkout '$toplevel'; pass the checkout's root"
[[ -f "$vllm_dir/use_existing_torch.py" ]] ||
    die "'$vllm_dir' has no use_existing_torch.py: not a vLLM checkout, or a vLLM too old for this script"
[[ -d "$vllm_dir/requirements" ]] ||
    die "'$vllm_dir' has no requirements/ folder: not a vLLM checkout of the supported layout"
git -C "$vllm_dir" rev-parse --verify -q HEAD >/dev/null || die "'$vllm_dir' has no commit yet"
git_dir=$(git -C "$vllm_dir" rev-parse --git-dir)
[[ "$git_dir" == /* ]] || git_dir="$vllm_dir/$git_dir"
for state in MERGE_HEAD rebase-merge rebase-apply CHERRY_PICK_HEAD; do
    [[ ! -e "$git_dir/$state" ]] || die "the checkout is in the middle of a merge/rebase/cherry-pick ($state); finish or abort it first"
done

python_bin=${PYTHON:-python3}
command -v "$python_bin" >/dev/null || die "python '$python_bin' not found; set PYTHON=/path/to/python"
torch_info=$("$python_bin" -c 'import torch; print(torch.__version__, torch.cuda.is_available(), torch.version.cuda)' 2>/dev/null) ||
    die "'$python_bin' cannot import torch; install your PyTorch into that environment first (or set PYTHON)"
read -r torch_version cuda_available torch_cuda_version <<<"$torch_info"
log "python: $(command -v "$python_bin")"
log "torch $torch_version, CUDA available: $cuda_available, built with CUDA: $torch_cuda_version"
if [[ -z "$target" ]]; then
    if [[ "$cuda_available" == True ]]; then target=cuda; else target=cpu; fi
fi
if [[ "$target" == cuda && "$torch_cuda_version" == None ]]; then
    die "--target cuda needs a CUDA build of torch, but torch $torch_version is a CPU build; use --target cpu or install CUDA torch"
fi

build_requirements=()
if [[ "$target" == cpu && -f "$vllm_dir/requirements/cpu-build.txt" ]]; then
    build_requirements=("requirements/cpu-build.txt")
elif [[ -f "$vllm_dir/requirements/build.txt" ]]; then
    build_requirements=("requirements/build.txt")
fi
install_args=(--no-build-isolation)
[[ $editable -eq 1 ]] && install_args+=(-e)
install_args+=(.)
build_env=("MAX_JOBS=${MAX_JOBS:-$(nproc)}")
[[ "$target" == cpu ]] && build_env+=("VLLM_TARGET_DEVICE=cpu")
[[ "$target" == cuda ]] && build_env+=("VLLM_TARGET_DEVICE=cuda")
log "checkout: $vllm_dir at $(git -C "$vllm_dir" rev-parse --short HEAD), target: $target, editable: $editable"

cd "$vllm_dir"
start_head=$(git rev-parse HEAD)
dirty=0
[[ -z "$(git status --porcelain --untracked-files=all)" ]] || dirty=1

if [[ $dry_run -eq 1 ]]; then
    log "dry run: nothing below is executed"
    if [[ $dirty -eq 1 ]]; then
        echo "git stash push --include-untracked -m '$STASH_MESSAGE_PREFIX'"
        echo "git stash apply --index stash@{0}"
    else
        echo "# working tree clean: nothing to stash"
    fi
    echo "$python_bin use_existing_torch.py"
    for requirement in "${build_requirements[@]}"; do
        echo "$python_bin -m pip install -r $requirement"
    done
    echo "env ${build_env[*]} $python_bin -m pip install ${install_args[*]}"
    echo "git reset --hard -q HEAD   # undo use_existing_torch.py's edits"
    if [[ $dirty -eq 1 ]]; then
        echo "# remove the stashed untracked files, then:"
        echo "git stash pop --index stash@{0}"
    fi
    exit 0
fi

# ---------------------------------------------------------------- save, build, always restore
stash_sha=""
restored=0
child_pid=""

# Prints how to get the saved work back by hand; never drops the stash.
print_recovery() {
    log "your local changes are safe in stash commit $stash_sha ($STASH_MESSAGE_PREFIX)."
    log "to recover them by hand, in $vllm_dir:"
    log "    git stash list            # find the entry for $stash_sha"
    log "    git reset --hard HEAD     # discard use_existing_torch.py's edits"
    log "    git stash pop --index stash@{N}   # N = that entry's index"
}

stash_index_of() {
    local sha=$1 index=0 entry
    while read -r entry; do
        if [[ "$entry" == "$sha" ]]; then
            echo "$index"
            return 0
        fi
        index=$((index + 1))
    done < <(git stash list --format=%H)
    return 1
}

restore() {
    [[ $restored -eq 0 ]] || return 0
    restored=1
    if [[ "$(git rev-parse HEAD)" != "$start_head" ]]; then
        log "HEAD moved during the build ($start_head -> $(git rev-parse HEAD)); not resetting anything."
        [[ -n "$stash_sha" ]] && print_recovery
        return 1
    fi
    log "restoring the checkout"
    git reset --hard -q HEAD
    if [[ -z "$stash_sha" ]]; then
        return 0
    fi
    local index untracked
    if ! index=$(stash_index_of "$stash_sha"); then
        log "the stash entry $stash_sha is no longer in 'git stash list'"
        print_recovery
        return 1
    fi
    # The stash holds the developer's untracked files in its third parent; the copies in the work
    # tree came from `stash apply` (possibly changed by the build) and would block the pop.
    if git rev-parse -q --verify "$stash_sha^3" >/dev/null; then
        while IFS= read -r -d '' untracked; do
            rm -f -- "$untracked"
        done < <(git ls-tree -r -z --name-only "$stash_sha^3")
    fi
    if ! git stash pop -q --index "stash@{$index}"; then
        log "git stash pop failed."
        print_recovery
        return 1
    fi
    log "local changes restored; stash entry dropped"
}

on_exit() {
    local status=$?
    trap - EXIT INT TERM
    if ! restore; then
        status=3
    fi
    exit "$status"
}

on_signal() {
    local signal=$1
    log "caught SIG$signal"
    if [[ -n "$child_pid" ]] && kill -0 "$child_pid" 2>/dev/null; then
        kill -TERM "$child_pid" 2>/dev/null || true
        wait "$child_pid" 2>/dev/null || true
    fi
    trap - EXIT INT TERM
    restore || true
    [[ "$signal" == INT ]] && exit 130
    exit 143
}

# Runs a step in the background and waits for it, so that a signal reaches our trap while a long
# build runs (bash defers traps until a foreground child exits).
run_step() {
    log "+ $*"
    "$@" &
    child_pid=$!
    local status=0
    wait "$child_pid" || status=$?
    child_pid=""
    return "$status"
}

trap on_exit EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

if [[ $dirty -eq 1 ]]; then
    git stash push -q --include-untracked -m "$STASH_MESSAGE_PREFIX ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    stash_sha=$(git rev-parse "stash@{0}")
    git stash apply -q --index "$stash_sha"
    log "local changes saved in stash $stash_sha and re-applied for the build"
fi

run_step "$python_bin" use_existing_torch.py
for requirement in "${build_requirements[@]}"; do
    run_step "$python_bin" -m pip install -r "$requirement"
done
run_step env "${build_env[@]}" "$python_bin" -m pip install "${install_args[@]}"
log "build and install finished"
