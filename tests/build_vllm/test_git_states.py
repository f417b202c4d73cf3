"""build_vllm_with_existing_torch.sh on hostile git states: each is built and restored exactly, or
refused up front with a one-line `error: <what>: <fix>` and exit 2, with nothing changed.

These runs use ``fake_python`` (conftest.py), so a case takes about a second; the real pip build
is covered by test_build_vllm_script.py.
"""

import pathlib
import subprocess

import pytest

from tests.build_vllm.helpers import (
    STASH_PREFIX,
    assert_intact,
    git,
    make_checkout,
    make_local_work,
    run_script,
    script_env,
    snapshot,
)


def assert_built_and_restored(repo, python, before, *, allow_new_stash=0, **kwargs):
    result = run_script(repo, python, "--target", "cpu", **kwargs)
    assert result.returncode == 0, result.stderr
    assert (repo / "build_marker.txt").exists(), "the build did not run"
    assert "torch_in_requirements=False" in (repo / "build_marker.txt").read_text()
    assert_intact(repo, before, allow_new_stash=allow_new_stash)
    return result


def assert_refused(repo, python, before, *fragments, **kwargs):
    result = run_script(repo, python, "--target", "cpu", **kwargs)
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr
    assert result.stderr.rstrip().endswith(error_lines[0]), result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    assert not (repo / "build_marker.txt").exists(), "the build ran"
    assert_intact(repo, before)
    return error_lines[0]


# ---------------------------------------------------------------- the two reproductions


def test_intent_to_add_entry_is_refused_with_the_fix(checkout, fake_python):
    """`git stash push` fails on an intent-to-add entry next to a tracked edit."""
    (checkout / "README.md").write_text("tracked edit\n")
    (checkout / "new.py").write_text("NEW = 1\n")
    git(checkout, "add", "-N", "new.py")
    before = snapshot(checkout)
    line = assert_refused(
        checkout, fake_python, before, "intent-to-add", "new.py", "git add --", "git rm --cached"
    )
    # The printed fixes work: either one makes the checkout buildable, and the work stays.
    fix = line.split("with '", 1)[1].split("'", 1)[0]
    subprocess.run(fix, shell=True, cwd=checkout, check=True)  # noqa: S602 - the script's own fix text
    before = snapshot(checkout)
    assert_built_and_restored(checkout, fake_python, before)
    assert (checkout / "README.md").read_text() == "tracked edit\n"


def test_unmerged_paths_from_a_conflicting_stash_pop_are_refused(checkout, fake_python):
    """A conflicting `git stash pop` leaves unmerged paths without MERGE_HEAD."""
    (checkout / "README.md").write_text("stashed edit\n")
    git(checkout, "stash", "-q")
    (checkout / "README.md").write_text("committed edit\n")
    git(checkout, "commit", "-qam", "edit")
    git(checkout, "stash", "pop", check=False)
    assert git(checkout, "ls-files", "-u")
    assert not (checkout / ".git/MERGE_HEAD").exists()
    (checkout / "notes.txt").write_text("untracked\n")
    before = snapshot(checkout)
    assert_refused(
        checkout, fake_python, before, "unmerged", "README.md", "git add --", "git restore --staged"
    )


# ---------------------------------------------------------------- refused states


def test_locked_index_is_refused(checkout, fake_python):
    make_local_work(checkout)
    (checkout / ".git/index.lock").write_text("")
    before = snapshot(checkout)
    assert_refused(checkout, fake_python, before, "index.lock", "rm ")
    assert (checkout / ".git/index.lock").exists()


def test_sparse_checkout_is_refused(checkout, fake_python):
    git(checkout, "sparse-checkout", "set", "--no-cone", "/*", "!/vllm_fake/old.py")
    (checkout / "README.md").write_text("edit\n")
    before = snapshot(checkout)
    assert_refused(checkout, fake_python, before, "sparse checkout", "git sparse-checkout disable")


@pytest.mark.parametrize(
    ("bit", "letter_fix"),
    [("--skip-worktree", "--no-skip-worktree"), ("--assume-unchanged", "--no-assume-unchanged")],
)
def test_hidden_index_bits_are_refused(checkout, fake_python, bit, letter_fix):
    """Edits to such files are invisible to git: a save could not hold them (assume-unchanged
    edits are even overwritten by `git stash push`)."""
    git(checkout, "update-index", bit, "requirements/cpu-build.txt")
    (checkout / "requirements/cpu-build.txt").write_text("setuptools>=40\nmy-pin\ntorch==2.9.0+cpu\n")
    (checkout / "README.md").write_text("edit\n")
    before = snapshot(checkout)
    assert_refused(
        checkout, fake_python, before, "requirements/cpu-build.txt", f"git update-index {letter_fix}"
    )


def test_checkout_without_commits_is_refused(tmp_path, fake_python):
    repo = make_checkout(tmp_path / "vllm")
    subprocess.run(["rm", "-rf", str(repo / ".git")], check=True)
    git(repo, "init", "-q")
    git(repo, "add", "README.md")
    before = snapshot_without_head(repo)
    result = run_script(repo, fake_python, "--target", "cpu")
    assert result.returncode == 2, result.stderr
    assert "error: " in result.stderr and "no commit" in result.stderr and "git commit" in result.stderr
    assert snapshot_without_head(repo) == before


def snapshot_without_head(repo: pathlib.Path) -> dict:
    return {
        "index": git(repo, "ls-files", "--stage"),
        "status": git(repo, "status", "--porcelain", "-uall"),
        "files": sorted(str(p) for p in repo.rglob("*") if ".git" not in p.parts),
    }


@pytest.mark.parametrize("state", ["MERGE_HEAD", "rebase-merge", "CHERRY_PICK_HEAD", "REVERT_HEAD"])
def test_operations_in_progress_are_refused(checkout, fake_python, state):
    head = git(checkout, "rev-parse", "HEAD").strip()
    target = checkout / ".git" / state
    if state == "rebase-merge":
        target.mkdir()
    else:
        target.write_text(head + "\n")
    before = snapshot(checkout)
    assert_refused(checkout, fake_python, before, state, "--abort")


@pytest.mark.parametrize(
    ("setting", "content"),
    [
        # autocrlf turns a file with mixed line endings into CRLF on the way back.
        ("autocrlf", b"line one\r\nline two\nline three\r\n"),
        # a clean filter that drops lines: what is saved is not what was there.
        ("lossy_filter", b"keep\nSECRET drop me\n"),
    ],
)
def test_local_changes_git_would_not_give_back_byte_for_byte_are_refused(
    checkout, fake_python, setting, content
):
    if setting == "autocrlf":
        git(checkout, "config", "core.autocrlf", "true")
        name = "notes.txt"
    else:
        git(checkout, "config", "filter.strip.clean", "grep -v SECRET")
        git(checkout, "config", "filter.strip.smudge", "cat")
        (checkout / ".git/info/attributes").write_text("*.cfg filter=strip\n")
        name = "local.cfg"
    (checkout / name).write_bytes(content)
    before = snapshot(checkout)
    assert_refused(checkout, fake_python, before, name, "line endings or filters")


# ---------------------------------------------------------------- handled states


def test_autocrlf_with_consistent_line_endings_is_built_and_restored(tmp_path, fake_python):
    repo = make_checkout(tmp_path / "vllm")
    git(repo, "config", "core.autocrlf", "true")
    git(repo, "rm", "-rq", "--cached", ".")
    git(repo, "reset", "-q", "--hard")  # check the files out again, now with CRLF
    assert (repo / "requirements/cpu-build.txt").read_bytes().endswith(b"\r\n")
    (repo / "README.md").write_bytes(b"fake vLLM\r\nlocal edit\r\n")
    (repo / "notes.txt").write_bytes(b"untracked\r\nnotes\r\n")
    before = snapshot(repo)
    assert_built_and_restored(repo, fake_python, before)


def test_detached_head(checkout, fake_python):
    (checkout / "README.md").write_text("second\n")
    git(checkout, "commit", "-qam", "second")
    git(checkout, "checkout", "-q", "--detach", "HEAD~1")
    make_local_work(checkout)
    before = snapshot(checkout)
    assert_built_and_restored(checkout, fake_python, before)


def test_submodule_with_local_work_and_submodule_recurse(tmp_path, fake_python):
    """`git reset --hard` under submodule.recurse=true would reset the submodule's work tree."""
    library = tmp_path / "library"
    library.mkdir()
    git(library, "init", "-q", "-b", "main")
    (library / "lib.txt").write_text("v1\n")
    git(library, "add", "-A")
    git(library, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "v1")
    (library / "lib.txt").write_text("v2\n")
    git(library, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qam", "v2")
    repo = make_checkout(tmp_path / "vllm")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(library), "third_party/lib")
    git(repo, "commit", "-qm", "add submodule")
    git(repo, "config", "submodule.recurse", "true")
    submodule = repo / "third_party/lib"
    git(submodule, "checkout", "-q", "HEAD~1")  # a moved gitlink
    (submodule / "lib.txt").write_text("edited inside the submodule\n")
    (submodule / "untracked_in_submodule.txt").write_text("mine\n")
    make_local_work(repo)
    before = snapshot(repo)
    submodule_before = snapshot(submodule)
    assert_built_and_restored(repo, fake_python, before)
    assert_intact(submodule, submodule_before)


def test_nested_repository_in_the_checkout(checkout, fake_python):
    nested = checkout / "my_experiments"
    nested.mkdir()
    git(nested, "init", "-q")
    (nested / "exp.py").write_text("uncommitted in the nested repo\n")
    make_local_work(checkout)
    before = snapshot(checkout)
    assert_built_and_restored(checkout, fake_python, before)


def test_file_names_with_spaces_newlines_unicode_and_dashes(checkout, fake_python):
    names = ["with space.py", "new\nline.py", "ünïcødé ✓.py", "-dash.py", "tab\there.txt", 'quote".txt']
    for name in names[:3]:
        (checkout / "vllm_fake" / name).write_text("committed\n")
    git(checkout, "add", "-A")
    git(checkout, "commit", "-qm", "odd names")
    for name in names[:3]:
        (checkout / "vllm_fake" / name).write_text("edited\n")
    git(checkout, "add", "vllm_fake/with space.py")
    for name in names[3:]:
        (checkout / name).write_text("untracked\n")
    (checkout / "dir with space/ünï dir").mkdir(parents=True)
    (checkout / "dir with space/ünï dir/f\nx").write_text("untracked deep\n")
    before = snapshot(checkout)
    assert_built_and_restored(checkout, fake_python, before)


def test_empty_untracked_directories_survive(checkout, fake_python):
    (checkout / "empty_top").mkdir()
    (checkout / "deep/er/still_empty").mkdir(parents=True)
    (checkout / "untracked_dir/empty_inside").mkdir(parents=True)
    (checkout / "untracked_dir/file.txt").write_text("x\n")
    (checkout / "README.md").write_text("edit\n")
    before = snapshot(checkout)
    assert_built_and_restored(checkout, fake_python, before)


def test_existing_stash_entries_are_unchanged(checkout, fake_python):
    for text in ("first stashed\n", "second stashed\n"):
        (checkout / "README.md").write_text(text)
        git(checkout, "stash", "-q")
    (checkout / "notes.txt").write_text("untracked\n")
    git(checkout, "stash", "push", "-q", "-u", "-m", "with untracked")
    make_local_work(checkout)
    before = snapshot(checkout)
    assert len(before["stash"].splitlines()) == 3
    assert_built_and_restored(checkout, fake_python, before)


def test_run_from_a_subdirectory_builds_the_checkout_root(checkout, fake_python):
    make_local_work(checkout)
    before = snapshot(checkout)
    result = run_script(checkout, fake_python, "--target", "cpu", cwd=checkout / "vllm_fake", pass_dir=False)
    assert result.returncode == 0, result.stderr
    assert (checkout / "build_marker.txt").exists()
    assert_intact(checkout, before)
    # An explicit subdirectory means the same checkout.
    result = run_script(checkout / "requirements", fake_python, "--target", "cpu")
    assert result.returncode == 0, result.stderr
    assert_intact(checkout, before)


def test_linked_worktree(checkout, fake_python, tmp_path):
    worktree = tmp_path / "vllm-worktree"
    git(checkout, "worktree", "add", "-q", "-b", "feature", str(worktree))
    assert (worktree / ".git").is_file()
    (checkout / "README.md").write_text("main checkout's own edit\n")
    make_local_work(worktree)
    main_before = snapshot(checkout)
    before = snapshot(worktree)
    assert_built_and_restored(worktree, fake_python, before)
    assert_intact(checkout, main_before)


def test_git_environment_variables_do_not_redirect_the_script(checkout, fake_python, tmp_path):
    other = make_checkout(tmp_path / "other")
    (other / "README.md").write_text("other's edit\n")
    other_before = snapshot(other)
    make_local_work(checkout)
    before = snapshot(checkout)
    env = script_env(fake_python, GIT_DIR=str(other / ".git"), GIT_WORK_TREE=str(other))
    assert_built_and_restored(checkout, fake_python, before, env=env)
    assert_intact(other, other_before)


def test_no_identity_and_commit_signing_configured(checkout, fake_python, tmp_path):
    """The save is a commit: it must work without user.name/email and must not try to sign."""
    git(checkout, "config", "--unset", "user.name")
    git(checkout, "config", "--unset", "user.email")
    git(checkout, "config", "commit.gpgSign", "true")
    git(checkout, "config", "gpg.program", "false")
    make_local_work(checkout)
    before = snapshot(checkout)
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    env = script_env(fake_python, HOME=str(empty_home), GIT_CONFIG_NOSYSTEM="1", EMAIL="")
    assert_built_and_restored(checkout, fake_python, before, env=env)


# ---------------------------------------------------------------- what the build does to the checkout


def test_files_the_build_changes_are_restored_and_their_state_is_kept(checkout, fake_python):
    """The build (or the developer, meanwhile) overwrites a tracked and an untracked file, deletes
    an untracked file, changes a mode and stages a file: all are put back, and the checkout as the
    build left it is kept as one stash entry, because the script cannot tell who made the change."""
    make_local_work(checkout)
    before = snapshot(checkout)
    result = assert_built_and_restored(checkout, fake_python, before, allow_new_stash=1, mode="vandal")
    assert "changed during the build" in result.stderr
    kept = git(checkout, "stash", "list", "--format=%gs").splitlines()[0]
    assert STASH_PREFIX in kept and "as the build left it" in kept
    assert git(checkout, "show", "stash@{0}:README.md") == "overwritten by the build\n"
    assert git(checkout, "show", "stash@{0}^3:notes.txt") == "untracked notes overwritten\n"


def test_use_existing_torch_edits_alone_leave_no_stash_entry(checkout, fake_python):
    make_local_work(checkout)
    (checkout / "requirements/cpu-build.txt").write_text("setuptools>=40\ntorch==2.9.0+cpu\nmine\n")
    before = snapshot(checkout)
    result = assert_built_and_restored(checkout, fake_python, before)
    assert "checkout restored" in result.stderr
