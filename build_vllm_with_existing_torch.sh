#!/usr/bin/env bash
# Build vLLM from a source checkout against the PyTorch that is already installed, and leave the
# checkout exactly as it was (tracked edits, staged edits, untracked files), whatever happens.
#
# Usage: build_vllm_with_existing_torch.sh [VLLM_DIR] [--target cpu|cuda] [--dry-run]
#                                          [--editable|--no-editable] [-h|--help]
#
#   VLLM_DIR        a git checkout of vLLM, or a directory inside one (default: the current directory)
#   --target        cpu or cuda (default: cuda when the installed torch sees a GPU, else cpu);
#                   cpu sets VLLM_TARGET_DEVICE=cpu
#   --dry-run       validate, then print every step without changing anything or building
#   --editable      pip install -e . (default);  --no-editable: pip install .
#
# Environment: PYTHON (default: python3) is the interpreter whose torch is used and into which
# vLLM is installed; MAX_JOBS (default: nproc) is passed to the build; KILL_GRACE_S (default: 10)
# is how long a stopped build step gets between SIGTERM and SIGKILL.
#
# How local work is kept safe. The files are never moved out of the way: the script never runs
# `git stash push/pop`, `reset`, `clean` or `checkout`. Before the build it records the index, the
# tracked files and the untracked files as git trees (in throwaway index files), checks them
# against `git status`, and stores them as a stash entry (`git commit-tree` + `git stash store`),
# which it verifies. After the build -- on success, on failure and on SIGINT/SIGTERM/SIGHUP -- it
# computes the same trees again, rewrites only the files that differ from the saved trees (from
# those trees, with `git checkout-index`), puts the index back if it changed (`git read-tree`),
# verifies the result and drops the stash entry. A change it cannot attribute to
# use_existing_torch.py (a build, or you, editing files meanwhile) is first stored as a second stash
# entry ("...the checkout as the build left it"), so nothing is lost. Ignored files, empty
# directories, nested repositories and submodule work trees are never written. Git states it cannot
# save faithfully are refused before anything runs. Each build step runs in its own session
# (setsid); on a signal the whole process group gets SIGTERM, then SIGKILL after KILL_GRACE_S, and
# the script waits for it before restoring. If the restore cannot complete (HEAD moved, or the
# result does not verify), the stash entry is kept, the recovery is printed and the exit code is 3.
set -euo pipefail
shopt -s inherit_errexit

readonly STASH_MESSAGE_PREFIX="build_vllm_with_existing_torch"
readonly SAVED_MESSAGE="$STASH_MESSAGE_PREFIX: the checkout before the build"
readonly LEFT_MESSAGE="$STASH_MESSAGE_PREFIX: the checkout as the build left it"
# The files vLLM's use_existing_torch.py rewrites (checked for lossy git conversions up front).
readonly USE_EXISTING_TORCH_FILES=("requirements/*.txt" "pyproject.toml")
readonly MAX_LISTED_PATHS=10

log() { printf '[build_vllm] %s\n' "$*" >&2 || true; }
# Byte order for every sorted path list (comm needs the same order on both sides).
sort() { LC_ALL=C command sort "$@"; }
comm() { LC_ALL=C command comm "$@"; }
# A user mistake or a state the script refuses: one line, exit 2.
die() {
    printf 'error: %s\n' "$*" >&2 || true
    exit 2
}

usage() {
    sed -n '5,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# NUL-separated paths on stdin -> up to MAX_LISTED_PATHS shell-quoted paths on one line.
quote_paths() {
    local path count=0 out=""
    while IFS= read -r -d '' path; do
        count=$((count + 1))
        if ((count <= MAX_LISTED_PATHS)); then
            out+="${out:+ }$(printf '%q' "$path")"
        fi
    done
    ((count <= MAX_LISTED_PATHS)) || out+=" (and $((count - MAX_LISTED_PATHS)) more)"
    printf '%s' "$out"
}

# Refuses when the NUL-separated paths on stdin are not empty: "error: <what> (<paths>)<why>:
# <fix>, then rerun", where each {} in the fix becomes the shell-quoted paths (the first
# MAX_LISTED_PATHS; a rerun lists the rest).
refuse_paths() { # what why fix
    local listed paths
    listed=$(quote_paths)
    [[ -n "$listed" ]] || return 0
    paths=${listed% (and * more)}
    die "$1 ($listed)$2: ${3//\{\}/$paths}, then rerun"
}

command -v git >/dev/null || die "git not found: install git"
setsid --wait true 2>/dev/null ||
    die "no setsid with --wait (util-linux 2.31 or newer; it runs each build step and git command in its own session): install util-linux"
[[ -r /proc/self/stat ]] ||
    die "/proc is not mounted (the script finds a stopped build's processes there): run it on Linux with /proc mounted"
# Every git command runs in its own session: a terminal's Ctrl-C (SIGINT to the whole foreground
# process group) must not reach it, because git catches the signal to delete its lock files and,
# when the signal is ignored (as it is while this script restores), carries on without them.
git() { setsid -w git --no-pager -c submodule.recurse=false "$@"; }

# ---------------------------------------------------------------- signals
# Installed before anything else runs. While validating (nothing changed yet) a signal exits at
# once; from then on it is recorded, the running build step is stopped and the restore follows.
caught_signal=""
phase=validate # then save, build
work_dir="" step_group=""
saved_index="" saved_worktree="" saved_untracked="" saved_stash="" after_torch_worktree=""

on_signal() {
    [[ -n "$caught_signal" ]] || caught_signal=$1
    log "caught SIG$1"
    [[ "$phase" != validate ]] || exit "$(signal_status)"
}

signal_status() {
    case "$caught_signal" in
        HUP) echo 129 ;;
        INT) echo 130 ;;
        *) echo 143 ;;
    esac
}

# Runs on every exit: stops a running step, restores after the build started, cleans up.
finish() {
    local status=$?
    trap '' INT TERM HUP # nothing interrupts the restore
    trap - EXIT
    set +e
    [[ -z "$step_group" ]] || stop_group "$step_group"
    case "$phase" in
        save)
            # Nothing was written to the work tree yet; a stored entry is only a copy.
            [[ -z "$saved_stash" ]] || drop_stash "$saved_stash"
            ;;
        build)
            if ! restore; then
                status=3
                print_recovery
            fi
            ;;
    esac
    [[ -z "$work_dir" ]] || rm -rf "$work_dir"
    if [[ -n "$caught_signal" && $status -ne 3 ]]; then
        status=$(signal_status)
    fi
    exit "$status"
}

trap finish EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

# ---------------------------------------------------------------- arguments
vllm_dir=""
target=""
dry_run=0
editable=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target)
            [[ $# -ge 2 ]] || die "--target needs a value: pass --target cpu or --target cuda"
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
        -*) die "unknown option '$1': see --help" ;;
        *)
            [[ -z "$vllm_dir" ]] || die "more than one VLLM_DIR given ('$vllm_dir' and '$1'): pass one checkout"
            vllm_dir=$1
            shift
            ;;
    esac
done
if [[ -n "$target" && "$target" != cpu && "$target" != cuda ]]; then
    die "--target must be cpu or cuda, got '$target': pass --target cpu or --target cuda"
fi
kill_grace_s=${KILL_GRACE_S:-10}
[[ "$kill_grace_s" =~ ^[0-9]+$ ]] ||
    die "KILL_GRACE_S must be a whole number of seconds, got '$kill_grace_s': e.g. KILL_GRACE_S=10"

# ---------------------------------------------------------------- validation (read-only)
# GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE, ... would point git (ours and the build's) elsewhere.
while IFS= read -r variable; do
    unset "$variable"
done < <(git rev-parse --local-env-vars)

vllm_dir=${vllm_dir:-$PWD}
[[ -d "$vllm_dir" ]] || die "VLLM_DIR '$vllm_dir' is not a directory: pass the path of a vLLM git checkout"
inside=$(git -C "$vllm_dir" rev-parse --is-inside-work-tree 2>/dev/null) || inside=false
[[ "$inside" == true ]] ||
    die "'$vllm_dir' is not in a git checkout: clone vLLM (git clone https://github.com/vllm-project/vllm) and pass its path"
vllm_dir=$(git -C "$vllm_dir" rev-parse --show-toplevel)
cd "$vllm_dir"
[[ -f use_existing_torch.py ]] ||
    die "'$vllm_dir' has no use_existing_torch.py: pass a vLLM checkout recent enough to have it"
[[ -d requirements ]] || die "'$vllm_dir' has no requirements/ folder: pass a vLLM checkout of the supported layout"
git rev-parse --verify -q HEAD >/dev/null ||
    die "'$vllm_dir' has no commit yet: commit its files first (git add -A && git commit -m initial), then rerun"

lock=$(git rev-parse --git-path index.lock)
[[ ! -e "$lock" ]] ||
    die "$lock exists (another git command is running here, or one crashed): wait for it to finish, or if no git process runs, remove it with 'rm $(printf '%q' "$lock")', then rerun"
for state in MERGE_HEAD:merge rebase-merge:rebase rebase-apply:rebase CHERRY_PICK_HEAD:cherry-pick REVERT_HEAD:revert; do
    path=$(git rev-parse --git-path "${state%%:*}")
    operation=${state#*:}
    [[ "$operation" == rebase && -e "$path/applying" ]] && operation=am
    [[ ! -e "$path" ]] ||
        die "the checkout is in the middle of a $operation (${state%%:*} exists): finish it, or run 'git $operation --abort', then rerun"
done
[[ "$(git config --type=bool --get core.sparseCheckout || true)" != true ]] ||
    die "the checkout is a sparse checkout (core.sparseCheckout): the build needs every file: run 'git sparse-checkout disable', then rerun"
# "<stage data>\t<path>": a path appears once per conflict stage.
git ls-files -u -z | while IFS= read -r -d '' entry; do printf '%s\0' "${entry#*$'\t'}"; done | sort -zu |
    refuse_paths "the index has unmerged paths" ", e.g. from a conflicting 'git stash pop'" \
        "resolve the conflicts and mark them with 'git add -- {}', or unstage them as they are with 'git restore --staged -- {}'"
# Only intent-to-add entries show as added between the index and the work tree.
git diff --no-ext-diff --name-only -z --diff-filter=A |
    refuse_paths "the index has intent-to-add entries" " from 'git add -N', which git cannot save" \
        "stage them with 'git add -- {}', or drop the intent with 'git rm --cached -q -- {}' (the files stay)"
# "<tag> <path>": S/s is skip-worktree, a lower-case tag is assume-unchanged.
git ls-files -v -z | while IFS= read -r -d '' entry; do
    if [[ "${entry:0:1}" == [Ss] ]]; then printf '%s\0' "${entry:2}"; fi
done | refuse_paths "files are marked skip-worktree" ": git does not see their edits, so they cannot be saved" \
    "clear the bit with 'git update-index --no-skip-worktree -- {}'"
git ls-files -v -z | while IFS= read -r -d '' entry; do
    if [[ "${entry:0:1}" == [[:lower:]] ]]; then printf '%s\0' "${entry:2}"; fi
done | refuse_paths "files are marked assume-unchanged" ": git does not see their edits, so they cannot be saved" \
    "clear the bit with 'git update-index --no-assume-unchanged -- {}'"
python_bin=${PYTHON:-python3}
command -v "$python_bin" >/dev/null || die "python '$python_bin' not found: set PYTHON=/path/to/python"
torch_info=$("$python_bin" -c 'import torch; print(torch.__version__, torch.cuda.is_available(), torch.version.cuda)' 2>/dev/null) ||
    die "'$python_bin' cannot import torch: install your PyTorch into that environment first (or set PYTHON)"
read -r torch_version cuda_available torch_cuda_version <<<"$torch_info"
log "python: $(command -v "$python_bin")"
log "torch $torch_version, CUDA available: $cuda_available, built with CUDA: $torch_cuda_version"
if [[ -z "$target" ]]; then
    if [[ "$cuda_available" == True ]]; then target=cuda; else target=cpu; fi
fi
if [[ "$target" == cuda && "$torch_cuda_version" == None ]]; then
    die "--target cuda needs a CUDA build of torch, but torch $torch_version is a CPU build: use --target cpu or install CUDA torch"
fi

build_requirements=()
if [[ "$target" == cpu && -f requirements/cpu-build.txt ]]; then
    build_requirements=("requirements/cpu-build.txt")
elif [[ -f requirements/build.txt ]]; then
    build_requirements=("requirements/build.txt")
fi
install_args=(--no-build-isolation)
[[ $editable -eq 1 ]] && install_args+=(-e)
install_args+=(.)
build_env=("MAX_JOBS=${MAX_JOBS:-$(nproc)}" "VLLM_TARGET_DEVICE=$target")
start_head=$(git rev-parse HEAD)
log "checkout: $vllm_dir at $(git rev-parse --short HEAD), target: $target, editable: $editable"

if [[ $dry_run -eq 1 ]]; then
    log "dry run: nothing below is executed"
    echo "# save: record the index, tracked and untracked files as trees, check them against git status,"
    echo "#       store them as stash entry '$SAVED_MESSAGE' (git commit-tree + git stash store); no file moves"
    echo "setsid $python_bin use_existing_torch.py"
    for requirement in "${build_requirements[@]}"; do
        echo "setsid $python_bin -m pip install -r $requirement"
    done
    echo "setsid env ${build_env[*]} $python_bin -m pip install ${install_args[*]}"
    echo "# restore: rewrite the files that differ from the saved trees (git checkout-index), put the index"
    echo "#          back if it changed (git read-tree), verify, then git stash drop the saved entry"
    exit 0
fi

# ---------------------------------------------------------------- git trees of the checkout
# Each state is three trees: the index, the tracked files as they are in the work tree (what `git
# stash` stores as its main tree), and the untracked, not ignored files (its third parent). The
# throwaway index files live in work_dir and keep their stat data, so only changed files are hashed
# again on the next call.
empty_tree=$(git hash-object -t tree /dev/null)
head_tree=$(git rev-parse "HEAD^{tree}")

# Runs git with stderr kept aside, shown only when it fails (git add warns about line endings).
git_quiet() {
    if ! git "$@" 2>"$work_dir/stderr"; then
        cat "$work_dir/stderr" >&2
        return 1
    fi
}

worktree_tree() { # $1: the index tree
    local index="$work_dir/worktree.index"
    # --reset: a one-way merge that keeps the stat data of unchanged entries and, unlike -m,
    # does not insist that the work tree match this throwaway index.
    GIT_INDEX_FILE=$index git_quiet read-tree --reset "$1" || return 1
    GIT_INDEX_FILE=$index git_quiet add -u || return 1
    GIT_INDEX_FILE=$index git write-tree
}

untracked_tree() {
    local index="$work_dir/untracked.index"
    rm -f "$index"
    # A nested repository is listed as "dir/"; update-index skips it, as `git stash -u` does.
    git ls-files -z -o --exclude-standard | GIT_INDEX_FILE=$index git_quiet update-index -z --add --remove --stdin ||
        return 1
    GIT_INDEX_FILE=$index git write-tree
}

# Sets <prefix>_index, <prefix>_worktree, <prefix>_untracked.
read_state() {
    local index worktree untracked
    index=$(git write-tree) || return 1
    worktree=$(worktree_tree "$index") || return 1
    untracked=$(untracked_tree) || return 1
    printf -v "${1}_index" '%s' "$index"
    printf -v "${1}_worktree" '%s' "$worktree"
    printf -v "${1}_untracked" '%s' "$untracked"
}

# The paths `git status` reports (a nested repository, "dir/", excluded) and the paths the saved
# trees differ in from HEAD: the same set, or the trees do not hold what git status shows.
status_paths() {
    git status --porcelain -z --untracked-files=all --ignore-submodules=dirty --no-renames |
        while IFS= read -r -d '' entry; do
            [[ "$entry" == */ ]] || printf '%s\0' "${entry:3}"
        done | sort -zu
}
tree_paths() { # index worktree untracked
    {
        git diff-tree -r -z --no-renames --name-only "$head_tree" "$1"
        git diff-tree -r -z --no-renames --name-only "$head_tree" "$2"
        git ls-tree -r -z --name-only "$3"
    } | sort -zu
}

# Git compares contents after its conversions (core.autocrlf, core.eol, .gitattributes text, eol,
# filter, ident, working-tree-encoding), so trees alone miss a file whose line endings changed.
# For the files a conversion applies to, the script also keeps their raw sha256 (work_dir/raw):
# the restore rewrites those whose bytes changed, and up front it refuses a local change (or a
# file use_existing_torch.py rewrites) that git would not give back byte for byte.
conversions_everywhere() {
    local autocrlf
    autocrlf=$(git config --get core.autocrlf || true)
    [[ "${autocrlf,,}" =~ ^(true|yes|on|1|input)$ || -n "$(git config --get core.eol || true)" ]]
}

# NUL-separated paths on stdin -> those that are regular files (not symlinks) now.
regular_files() {
    local path
    while IFS= read -r -d '' path; do
        if [[ -f "$path" && ! -L "$path" ]]; then printf '%s\0' "$path"; fi
    done
}

# NUL-separated paths on stdin -> the regular files among them that a conversion applies to.
converted_files() {
    local path value everywhere=0
    conversions_everywhere && everywhere=1
    regular_files | if [[ $everywhere -eq 1 ]]; then cat; else
        git check-attr -z --stdin text eol filter ident working-tree-encoding |
            while IFS= read -r -d '' path && IFS= read -r -d '' _ && IFS= read -r -d '' value; do
                if [[ "$value" != unspecified ]]; then printf '%s\0' "$path"; fi
            done
    fi | sort -zu
}

# "sha256  path" records (NUL-terminated, sorted) of the NUL-separated files on stdin.
raw_hashes() {
    xargs -0 -r sha256sum -z -- | sort -z
}

# Fills work_dir/converted.tracked, converted.untracked and raw; prints (NUL-separated) the files
# among the local changes and use_existing_torch.py's files that would not come back byte for byte.
prepare_conversions() {
    local path roundtrip="$work_dir/roundtrip" checked=()
    GIT_INDEX_FILE="$work_dir/worktree.index" git ls-files -z | converted_files >"$work_dir/converted.tracked"
    GIT_INDEX_FILE="$work_dir/untracked.index" git ls-files -z | converted_files >"$work_dir/converted.untracked"
    cat "$work_dir/converted.tracked" "$work_dir/converted.untracked" | raw_hashes >"$work_dir/raw"
    [[ -s "$work_dir/converted.tracked" || -s "$work_dir/converted.untracked" ]] || return 0
    mkdir -p "$roundtrip"
    # All converted untracked files; tracked ones when changed locally or rewritten by use_existing_torch.py.
    mapfile -d '' checked < <(comm -z -12 "$work_dir/converted.tracked" <({
        git diff-tree -r -z --no-renames --name-only --diff-filter=d "$head_tree" "$saved_worktree"
        git ls-files -z -- "${USE_EXISTING_TORCH_FILES[@]}"
    } | sort -zu))
    if [[ ${#checked[@]} -gt 0 ]]; then
        printf '%s\0' "${checked[@]}" | GIT_INDEX_FILE="$work_dir/worktree.index" \
            git_quiet checkout-index -z --stdin --prefix="$roundtrip/" || return 1
    fi
    if [[ -s "$work_dir/converted.untracked" ]]; then
        GIT_INDEX_FILE="$work_dir/untracked.index" \
            git_quiet checkout-index -z --stdin --prefix="$roundtrip/" <"$work_dir/converted.untracked" || return 1
        mapfile -d '' -O "${#checked[@]}" checked <"$work_dir/converted.untracked"
    fi
    for path in "${checked[@]}"; do
        cmp -s -- "$path" "$roundtrip/$path" || printf '%s\0' "$path"
    done
    rm -rf "$roundtrip"
}

# Of the converted files still present, those (NUL-separated, sorted) whose bytes differ from before
# the build ("sha256  path" records: the path starts at offset 66).
raw_changed() {
    local record
    cat "$work_dir/converted.tracked" "$work_dir/converted.untracked" | regular_files | raw_hashes |
        comm -z -13 "$work_dir/raw" - | while IFS= read -r -d '' record; do printf '%s\0' "${record:66}"; done |
        sort -z
}

# Rewrites, from the saved trees, the converted files whose bytes changed although git's trees
# may not show it (e.g. use_existing_torch.py writing LF into a CRLF file under core.autocrlf).
rewrite_raw_changed() {
    local changed="$work_dir/raw.changed"
    raw_changed >"$changed" || return 1
    [[ -s "$changed" ]] || return 0
    comm -z -12 "$work_dir/converted.tracked" "$changed" | write_from_tree "$saved_worktree" || return 1
    comm -z -12 "$work_dir/converted.untracked" "$changed" | write_from_tree "$saved_untracked"
}

as_script() {
    GIT_AUTHOR_NAME=$STASH_MESSAGE_PREFIX GIT_AUTHOR_EMAIL=build_vllm@localhost \
        GIT_COMMITTER_NAME=$STASH_MESSAGE_PREFIX GIT_COMMITTER_EMAIL=build_vllm@localhost "$@"
}

# A stash-shaped commit of a state (worktree tree, parents HEAD, the index commit and, when there
# are untracked files, their commit), so that `git stash apply --index` restores it.
make_stash_commit() { # index worktree untracked message
    local index_commit untracked_commit parents
    index_commit=$(as_script git commit-tree --no-gpg-sign -p "$start_head" -m "index on $start_head" "$1") || return 1
    parents=(-p "$start_head" -p "$index_commit")
    if [[ "$3" != "$empty_tree" ]]; then
        untracked_commit=$(as_script git commit-tree --no-gpg-sign -m "untracked files on $start_head" "$3") || return 1
        parents+=(-p "$untracked_commit")
    fi
    as_script git commit-tree --no-gpg-sign "${parents[@]}" -m "$4" "$2"
}

stash_index_of() {
    local sha=$1 index=0 entry
    while IFS= read -r entry; do
        if [[ "$entry" == "$sha" ]]; then
            echo "$index"
            return 0
        fi
        index=$((index + 1))
    done < <(git stash list --format=%H)
    return 1
}

# The stash entry exists, in the list, and holds exactly the given trees on top of HEAD.
stash_holds() { # sha index worktree untracked
    stash_index_of "$1" >/dev/null || return 1
    [[ "$(git rev-parse -q --verify "$1^1")" == "$start_head" ]] || return 1
    [[ "$(git rev-parse -q --verify "$1^2^{tree}")" == "$2" ]] || return 1
    [[ "$(git rev-parse -q --verify "$1^{tree}")" == "$3" ]] || return 1
    if [[ "$4" == "$empty_tree" ]]; then
        ! git rev-parse -q --verify "$1^3" >/dev/null || return 1
    else
        [[ "$(git rev-parse -q --verify "$1^3^{tree}")" == "$4" ]] || return 1
    fi
}

# Stores a state as a stash entry and verifies it; the variable named $1 gets the commit before it
# is stored, so that an interrupted store can still be found (and dropped) by the caller.
store_stash() { # variable index worktree untracked message
    local sha message
    message="$5 ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    sha=$(make_stash_commit "$2" "$3" "$4" "$message") || return 1
    printf -v "$1" '%s' "$sha"
    as_script git stash store -q -m "$message" "$sha" || return 1
    stash_holds "$sha" "$2" "$3" "$4"
}

drop_stash() {
    local index
    index=$(stash_index_of "$1") || return 0
    [[ "$(git rev-parse "stash@{$index}")" == "$1" ]] && git stash drop -q "stash@{$index}"
}

# ---------------------------------------------------------------- process groups
# True while a process of group $1 runs (zombies, which only wait to be reaped, do not count).
group_alive() {
    local stat rest state pgrp
    for stat in /proc/[0-9]*/stat; do
        { read -r rest <"$stat"; } 2>/dev/null || continue
        rest=${rest##*') '} # after "pid (comm) ": "state ppid pgrp ..."
        read -r state _ pgrp _ <<<"$rest"
        [[ "$pgrp" == "$1" && "$state" != Z ]] && return 0
    done
    return 1
}

# SIGTERM to the whole group, SIGKILL after kill_grace_s, then wait until none of it runs.
stop_group() {
    local group=$1 tries
    if group_alive "$group"; then
        log "stopping the build step's processes (group $group): SIGTERM"
        kill -TERM -- "-$group" 2>/dev/null || true
        tries=$((kill_grace_s * 10))
        while group_alive "$group" && ((tries-- > 0)); do sleep 0.1; done
        if group_alive "$group"; then
            log "still running after ${kill_grace_s} s: SIGKILL"
            kill -KILL -- "-$group" 2>/dev/null || true
            tries=100
            while group_alive "$group" && ((tries-- > 0)); do sleep 0.1; done
            ! group_alive "$group" || log "warning: processes of group $group survive SIGKILL (uninterruptible)"
        fi
    fi
    wait "$group" 2>/dev/null || true
}

# Runs a step in its own session and process group, in the background so that a signal reaches
# our trap at once (bash defers traps until a foreground child exits), and leaves none of its
# processes behind.
run_step() {
    log "+ $*"
    setsid "$@" &
    step_group=$!
    local status=0
    wait "$step_group" || status=$?
    stop_group "$step_group"
    step_group=""
    if [[ -n "$caught_signal" ]]; then
        return "$(signal_status)"
    fi
    return "$status"
}

# ---------------------------------------------------------------- restore
print_recovery() {
    if [[ -n "$saved_stash" ]]; then
        log "your checkout as it was before the build is kept as stash entry $saved_stash ('$SAVED_MESSAGE', see 'git stash list');"
        local untracked_step=""
        if git rev-parse -q --verify "$saved_stash^3" >/dev/null; then
            untracked_step=", move away the untracked files it holds that are still there (git show --name-only --format= $saved_stash^3)"
        fi
        log "to get it back: git reset --hard $start_head (if HEAD moved, this moves your branch back too; later commits stay in 'git reflog')$untracked_step, then git stash apply --index $saved_stash"
    else
        log "the checkout had no local changes at $start_head before the build; 'git status' shows what changed since"
    fi
}

# Writes the given NUL-separated paths (stdin) from a tree into the work tree.
write_from_tree() {
    local index="$work_dir/restore.index"
    rm -f "$index"
    GIT_INDEX_FILE=$index git_quiet read-tree "$1" || return 1
    GIT_INDEX_FILE=$index git_quiet checkout-index -f -z --stdin
}

restore() {
    local now_head now_index now_worktree now_untracked changed changed_untracked others kept="" new_untracked
    now_head=$(git rev-parse HEAD) || return 1
    if [[ "$now_head" != "$start_head" ]]; then
        log "HEAD moved during the build ($start_head -> $now_head): nothing was restored; use_existing_torch.py's edits are still in the work tree."
        return 1
    fi
    read_state now || return 1
    changed=$(git diff-tree -r -z --no-renames --name-only "$saved_worktree" "$now_worktree" | quote_paths)
    changed_untracked=$(git diff-tree -r -z --no-renames --name-only --diff-filter=DMT "$saved_untracked" "$now_untracked" | quote_paths)
    if [[ -n "$changed" || -n "$changed_untracked" || "$now_index" != "$saved_index" ]]; then
        # Changes use_existing_torch.py made and nothing touched since are its own; any other
        # change (by the build or by you) is kept in a stash entry before being undone.
        if [[ -n "$after_torch_worktree" ]]; then
            others=$(comm -z -12 \
                <(git diff-tree -r -z --no-renames --name-only "$saved_worktree" "$now_worktree" | sort -z) \
                <(git diff-tree -r -z --no-renames --name-only "$after_torch_worktree" "$now_worktree" | sort -z) |
                quote_paths)
        else
            others=$changed
        fi
        others+=${changed_untracked:+${others:+ }$changed_untracked}
        [[ "$now_index" == "$saved_index" ]] || others+="${others:+ }(the index)"
        if [[ -n "$others" ]]; then
            store_stash kept "$now_index" "$now_worktree" "$now_untracked" "$LEFT_MESSAGE" || return 1
            log "changed during the build (not by use_existing_torch.py): $others"
            log "the checkout as the build left it is kept as stash entry $kept ('$LEFT_MESSAGE')"
        fi
        if [[ "$now_index" != "$saved_index" ]]; then
            git_quiet read-tree --reset "$saved_index" || return 1
        fi
        git diff-tree -r -z --no-renames --name-only --diff-filter=DMT "$saved_worktree" "$now_worktree" |
            write_from_tree "$saved_worktree" || return 1
        git diff-tree -r -z --no-renames --name-only --diff-filter=DMT "$saved_untracked" "$now_untracked" |
            write_from_tree "$saved_untracked" || return 1
    fi
    rewrite_raw_changed || return 1
    read_state now || return 1
    if [[ "$now_index" != "$saved_index" || "$now_worktree" != "$saved_worktree" ||
        -n "$(git diff-tree -r --no-renames --name-only --diff-filter=DMT "$saved_untracked" "$now_untracked")" ||
        -n "$(raw_changed | quote_paths)" ]]; then
        log "the restored checkout does not match the saved state:"
        git diff-tree -r --no-renames --stat "$saved_worktree" "$now_worktree" >&2 || true
        raw_changed | tr '\0' '\n' | sed 's/^/    bytes differ: /' >&2 || true
        return 1
    fi
    new_untracked=$(git diff-tree -r -z --no-renames --name-only --diff-filter=A "$saved_untracked" "$now_untracked" | quote_paths)
    [[ -z "$new_untracked" ]] || log "new untracked files from the build, left in place: $new_untracked"
    if [[ -n "$saved_stash" ]]; then
        drop_stash "$saved_stash" || {
            log "could not drop stash entry $saved_stash; it holds the same state as the checkout, drop it by hand"
            return 1
        }
    fi
    log "checkout restored: index, tracked and untracked files are as before the build"
}

# ---------------------------------------------------------------- save, build, always restore
phase=save
work_dir=$(mktemp -d "${TMPDIR:-/tmp}/build_vllm.XXXXXX")
read_state saved
if ! cmp -s <(status_paths) <(tree_paths "$saved_index" "$saved_worktree" "$saved_untracked"); then
    die "the saved trees do not hold what 'git status' shows (a git setting this script does not handle; nothing was changed): commit or stash your changes yourself, then rerun"
fi
prepare_conversions >"$work_dir/lossy"
refuse_paths "git's line endings or filters (core.autocrlf, core.eol, .gitattributes) would not give back the exact bytes of local changes or of files use_existing_torch.py rewrites" "" \
    "give them the line endings git checks out, or move them out of the checkout" <"$work_dir/lossy"
if [[ "$saved_index" != "$head_tree" || "$saved_worktree" != "$head_tree" || "$saved_untracked" != "$empty_tree" ]]; then
    store_stash saved_stash "$saved_index" "$saved_worktree" "$saved_untracked" "$SAVED_MESSAGE" || {
        [[ -z "$caught_signal" ]] || exit "$(signal_status)" # a signal killed a step of the save
        log "could not store and verify the stash entry; nothing was changed"
        exit 3
    }
    log "local changes saved as stash entry $saved_stash (the files stay in place)"
else
    log "no local changes"
fi
[[ -z "$caught_signal" ]] || exit "$(signal_status)"

phase=build
status=0
run_step "$python_bin" use_existing_torch.py || status=$?
after_torch_worktree=$(worktree_tree "$(git write-tree)")
[[ $status -eq 0 ]] || exit "$status"
for requirement in "${build_requirements[@]}"; do
    run_step "$python_bin" -m pip install -r "$requirement"
done
run_step env "${build_env[@]}" "$python_bin" -m pip install "${install_args[@]}"
log "build and install finished"
