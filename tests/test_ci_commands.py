"""What a pull request's CI runs: GitHub annotations, an offline plan between two folders, and a
plan as a pull-request comment. None of these needs the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Cli
from daemons import project_yaml, schedule_yaml

# Nothing listens here: a command that reached for the database would fail.
NO_DATABASE = {"RECONCILER_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"}


@pytest.fixture
def offline(cli_env: dict[str, str], tmp_path: Path) -> Cli:
    """The CLI in ``tmp_path`` with a database URL that nothing answers."""
    return Cli({**cli_env, **NO_DATABASE}, tmp_path)


def _folder(root: Path, name: str, cron: str = "0 5 * * *", extra: str = "") -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "sales.yaml").write_text(project_yaml() + schedule_yaml("nightly", cron=cron) + extra)
    return folder


def test_validate_prints_github_annotations(offline: Cli, tmp_path: Path) -> None:
    """Each finding is an ``::error file=,line=,col=::`` line; ``,`` and ``:`` in the path are
    escaped; the exit code is 1."""
    folder = tmp_path / "schedules.d"
    folder.mkdir()
    (folder / "a,b.yaml").write_text(project_yaml() + schedule_yaml("x", cron="0 0 31 2 *"))
    done = offline("validate", "--output", "github", str(folder))
    assert done.returncode == 1
    first = done.stdout.splitlines()[0]
    assert first == (
        f"::error file={folder.as_posix().replace(':', '%3A')}/a%2Cb.yaml,line=17,col=9,"
        "title=reconcile validate::spec.cron: '0 0 31 2 *' never fires (February has no 31st)"
    )


def test_github_output_is_only_for_validate(offline: Cli) -> None:
    """Asked of another command, ``--output github`` is a usage error naming validate."""
    done = offline("status", "--output", "github")
    assert done.returncode == 1
    assert "--output github is for `reconcile validate`" in done.stderr


def test_plan_against_another_folder_needs_no_database(offline: Cli, tmp_path: Path) -> None:
    """The main branch's folder stands in for the database: the change and its next runs show."""
    base = _folder(tmp_path, "main")
    head = _folder(tmp_path, "head", cron="30 11 * * *")
    done = offline("plan", "--dir", str(head), "--against", str(base), "--detailed-exitcode")
    assert done.returncode == 2, done.stderr
    assert '      cron_expression: "0 5 * * *" -> "30 11 * * *"' in done.stdout
    assert "      next: " in done.stdout
    assert done.stdout.rstrip().endswith("Plan: 0 to create, 1 to update, 0 to delete.")
    same = offline("--dry-run", "--dir", str(base), "--against", str(base))
    assert (same.returncode, same.stdout) == (0, "No changes.\n")


def test_plan_against_a_broken_folder_says_which(offline: Cli, tmp_path: Path) -> None:
    """A folder to plan against that does not load is an error naming it, not a plan."""
    head = _folder(tmp_path, "head")
    base = _folder(tmp_path, "main", extra="  bogus: 1\n")
    done = offline("plan", "--dir", str(head), "--against", str(base))
    assert done.returncode == 1
    assert f"cannot plan against {base}" in done.stderr
    assert "bogus" in done.stderr
    assert offline("apply", "--dir", str(head), "--against", str(base)).returncode == 1


def test_the_markdown_plan_is_a_comment_and_the_whole_plan_is_saved(
    offline: Cli, tmp_path: Path
) -> None:
    """``--output markdown`` prints the comment under 65,000 characters and saves the whole
    plan, which is longer, to ``--plan-file``."""
    base = tmp_path / "main"
    base.mkdir()
    (base / "p.yaml").write_text(project_yaml())
    head = tmp_path / "head"
    head.mkdir()
    many = "".join(schedule_yaml(f"schedule-{i:05}") for i in range(2500))
    (head / "all.yaml").write_text(project_yaml() + many)
    saved = tmp_path / "whole.md"
    done = offline(
        "--dry-run", "--dir", str(head), "--against", str(base),
        "--output", "markdown", "--plan-file", str(saved),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<!-- reconcile-plan -->\n")
    assert len(done.stdout) < 65_000
    assert f"saved as `{saved}`" in done.stdout
    whole = saved.read_text()
    assert "+ Schedule schedule-02499" in whole
    assert len(whole) > 65_000


def test_the_pre_commit_hook_runs_validate(offline: Cli, tmp_path: Path) -> None:
    """The hook's entry validates the folder: 0 when valid, 1 with the findings when not."""
    import shlex

    import yaml

    root = Path(__file__).resolve().parent.parent
    (hook,) = yaml.safe_load((root / ".pre-commit-hooks.yaml").read_text())
    assert (hook["id"], hook["pass_filenames"], hook["language"]) == (
        "reconcile-validate", False, "python",
    )  # fmt: skip
    program, *args = shlex.split(hook["entry"])
    assert program == "reconcile"
    _folder(tmp_path, "schedules.d")
    assert offline(*args).returncode == 0
    (tmp_path / "schedules.d" / "bad.yaml").write_text("kind: Nope\n")
    failed = offline(*args)
    assert failed.returncode == 1
    assert "bad.yaml:1:" in failed.stdout


def test_the_pre_commit_hook_runs_on_commits_that_only_delete(offline: Cli, tmp_path: Path) -> None:
    """pre-commit passes only files that still exist: the hook runs on every commit
    (``always_run``), so deleting the project its schedules use is caught."""
    import shlex

    import yaml

    root = Path(__file__).resolve().parent.parent
    (hook,) = yaml.safe_load((root / ".pre-commit-hooks.yaml").read_text())
    assert (hook["always_run"], hook["pass_filenames"]) == (True, False)
    assert "files" not in hook
    folder = tmp_path / "schedules.d"
    folder.mkdir()
    (folder / "project.yaml").write_text(project_yaml())
    (folder / "nightly.yaml").write_text(schedule_yaml("nightly"))
    _, *args = shlex.split(hook["entry"])
    assert offline(*args).returncode == 0
    (folder / "project.yaml").unlink()
    failed = offline(*args)
    assert failed.returncode == 1
    assert "nightly.yaml:" in failed.stdout


def test_plan_against_a_folder_that_does_not_exist_yet(offline: Cli, tmp_path: Path) -> None:
    """The first pull request that adds the folder: a base folder missing in a folder that exists
    is nothing before (every document a create); with its parent missing too, it is an error."""
    head = _folder(tmp_path, "head")
    (tmp_path / "base").mkdir()
    done = offline("plan", "--dir", str(head), "--against", str(tmp_path / "base" / "schedules.d"),
                   "--detailed-exitcode")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stdout.rstrip().endswith("Plan: 2 to create, 0 to update, 0 to delete.")
    wrong = tmp_path / "nowhere" / "schedules.d"
    failed = offline("plan", "--dir", str(head), "--against", str(wrong))
    assert failed.returncode == 1
    assert f"cannot plan against {wrong}: neither it nor {wrong.parent} exists" in failed.stderr


def _workflow_offline_steps() -> list[tuple[str, str]]:
    """The README workflow's offline job: (working directory, command) of its reconcile steps."""
    import re

    import yaml

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "jobs:" in b]
    steps = yaml.safe_load(block)["jobs"]["offline"]["steps"]
    return [
        (step.get("working-directory", "."), step["run"])
        for step in steps
        if str(step.get("run", "")).startswith("reconcile ")
    ]


def test_the_readme_offline_job_passes_on_the_first_pull_request(
    offline: Cli, tmp_path: Path
) -> None:
    """The README's offline job, run as written in its checkouts: the base branch has no
    schedules.d yet, and validate and the plan against it both pass."""
    import shlex

    steps = _workflow_offline_steps()
    assert [run.split()[1] for _, run in steps] == ["validate", "plan"]
    (tmp_path / "head").mkdir()
    _folder(tmp_path / "head", "schedules.d")
    (tmp_path / "base").mkdir()
    for where, run in steps:
        _, *args = shlex.split(run)
        done = Cli(offline.env, tmp_path / where)(*args)
        assert done.returncode == 0, f"{run}\n{done.stdout}\n{done.stderr}"
    assert "Plan: 2 to create" in done.stdout
