"""Test helpers: ``reconcile serve`` as a real process, its HTTP endpoints, and folder documents."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import psycopg

__all__ = [
    "Daemon",
    "free_port",
    "one",
    "project_yaml",
    "sales_folder",
    "schedule_yaml",
    "wait_until",
]

T = TypeVar("T")


def wait_until(check: Callable[[], T], *, timeout: float = 30, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def project_yaml(name: str = "sales_project", table: str = "public.sales") -> str:
    return (
        "apiVersion: reconciler/v1\nkind: Project\n"
        f"metadata:\n  name: {name}\n"
        f"spec:\n  target:\n    table: {table}\n  csv:\n    header: true\n"
    )


def schedule_yaml(
    name: str,
    *,
    project: str = "sales_project",
    cron: str = "0 0 1 1 *",
    local_files: str = "../data/*.csv",
    grace: int | None = None,
) -> str:
    extra = f"  misfire_grace: {grace}\n" if grace is not None else ""
    return (
        "---\napiVersion: reconciler/v1\nkind: Schedule\n"
        f"metadata:\n  name: {name}\n"
        f'spec:\n  project: {project}\n  cron: "{cron}"\n'
        f'  local_files: ["{local_files}"]\n{extra}'
    )


def sales_folder(database_url: str, cwd: Path, documents: str) -> Path:
    """``cwd/schedules.d`` holding ``documents`` in sales.yaml, ``cwd/data`` beside it, and
    ``public.sales`` created: the folder a daemon test serves."""
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE public.sales (sale_id int, sold_at date, amount numeric)")
    (cwd / "data").mkdir()
    path = cwd / "schedules.d"
    path.mkdir(exist_ok=True)
    (path / "sales.yaml").write_text(documents)
    return path


class Daemon:
    """One ``python -m reconciler serve`` process with its own HTTP port and log file."""

    def __init__(
        self,
        cwd: Path,
        env: dict[str, str],
        *,
        name: str = "serve",
        command: list[str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.log_path = cwd / f"{name}-{self.port}.log"
        self._log: IO[str] = self.log_path.open("w")
        self.process = subprocess.Popen(
            [*(command or [sys.executable, "-m", "reconciler"]), "serve", *args],
            cwd=cwd,
            env={**env, "RECONCILER_HTTP_ADDRESS": f"127.0.0.1:{self.port}"},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            text=True,
        )

    def get(self, path: str) -> tuple[int, str]:
        """``GET path``: the status and body; status 0 when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(self._ready_or_dead, timeout=timeout, what=f"/readyz\n{self.log()}")

    def _ready_or_dead(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log()}")
        return self.ready()

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled metric from ``/metrics``."""
        _, body = self.get("/metrics")
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


def one(url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row of ``query`` (``None`` when there is no row)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]
