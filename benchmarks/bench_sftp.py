"""Benchmark: reading a large CSV over SFTP, reconcile's source against OpenSSH and plain paramiko.

Run by hand (not part of the test suite):

    python benchmarks/bench_sftp.py [--size-mb 512 | --gb] [--repeat 3] [--default-mb 64]
                                    [--slow-reader MB/S]

One run generates the CSV, starts OpenSSH's sshd on a loopback port (``tests/sftp_servers.py``),
and measures, in interleaved rounds so that load on the machine hits every method alike:

  openssh sftp get   ``sftp -b`` downloading the file to disk (the baseline; its own process)
  reconcile source   ``SftpSource(...).open(f).read(128 KiB)`` to nowhere, as COPY reads it
  paramiko prefetch  ``SFTPFile.prefetch()`` then ``read``, paramiko's defaults otherwise
  paramiko default   ``SFTPFile.read`` with paramiko's defaults, over the first --default-mb MB

With ``--slow-reader MB/S`` the source and prefetch also read once at that pace, as a COPY slower
than the network would: their peak RSS must stay flat.

Each client runs in a fresh child process, which reports its own peak RSS (VmHWM); CPU s/GB (the
clients' user + system time) is far less sensitive to other load on the machine than MB/s.
Targets: the source at least as fast as ``sftp get`` (so that streaming into COPY beats
"download, then \\copy"), and under 100 MB peak RSS for a 1 GB file (--gb).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["generate", "main"]

_ROOT = Path(__file__).resolve().parent.parent
_BLOCK = 128 * 1024
_METHODS = ("openssh sftp get", "reconcile source", "paramiko prefetch", "paramiko default")


def generate(path: Path, size: int) -> None:
    """A CSV of about ``size`` bytes (8 columns, ~100 bytes a row), written in 4 MB chunks."""
    with path.open("w") as out:
        out.write("id,created_at,customer,quantity,price,paid,region,note\n")
        written, i = 0, 0
        while written < size:
            chunk = "".join(
                f"{n},2026-11-{1 + n % 28:02d} {n % 24:02d}:00:00+00,customer-{n % 100_003:06d},"
                f"{n % 500},{(n % 100_000) / 100:.2f},{'true' if n % 3 else 'false'},"
                f"region-{n % 5},"
                f'"order {n}, {1 + n % 9} parcels"\n'
                for n in range(i, i + 40_000)
            )
            out.write(chunk)
            written += len(chunk)
            i += 40_000


class _Run(NamedTuple):
    seconds: float
    nbytes: int
    cpu: float  # user + system seconds of the client process(es)
    rss_mb: float  # peak RSS, NaN when not measured

    @property
    def rate(self) -> float:
        return self.nbytes / self.seconds / 1e6


def _child(kind: str, spec: dict[str, Any]) -> None:
    """Read the file one way and print a ``_Run`` as JSON."""
    limit, pace = spec["limit"], spec.get("pace")  # pace: seconds per block (a slow consumer)
    total = 0
    if kind.startswith("reconcile source"):
        from reconciler import logs
        from reconciler.imports.sources.sftp import SftpSource
        from reconciler.model.specs import Sftp

        logs.configure(level="warning")  # structlog's default would print to our stdout
        config = Sftp(
            host="127.0.0.1", port=spec["port"], username=spec["user"],
            private_key_file=spec["key"], known_hosts_file=spec["known_hosts"],
            remote_dir=spec["folder"], pattern=spec["name"],
        )  # fmt: skip
        began, cpu = time.perf_counter(), time.process_time()
        with SftpSource(config, environ={}) as source:
            (f,) = source.list_files()
            with source.open(f) as stream:
                while block := stream.read(_BLOCK):
                    total += len(block)
                    if pace:
                        time.sleep(pace)
    else:
        import paramiko

        began, cpu = time.perf_counter(), time.process_time()
        client = paramiko.SSHClient()
        client.load_host_keys(spec["known_hosts"])
        client.connect(
            "127.0.0.1", spec["port"], spec["user"], key_filename=spec["key"],
            allow_agent=False, look_for_keys=False,
        )  # fmt: skip
        sftp = client.open_sftp()
        with sftp.open(f"{spec['folder']}/{spec['name']}", "rb") as remote:
            if kind.startswith("paramiko prefetch"):
                remote.prefetch()
            while total < limit and (block := remote.read(_BLOCK)):
                total += len(block)
                if pace:
                    time.sleep(pace)
        client.close()
    run = _Run(time.perf_counter() - began, total, time.process_time() - cpu, _peak_rss_mb())
    print(json.dumps(run._asdict()))


def _peak_rss_mb() -> float:
    """This process's peak RSS. Not ``ru_maxrss``: Linux carries the parent's peak into a child
    across fork and exec, so a child of a large parent would seem at least as large."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _measure(kind: str, spec: dict[str, Any], out: Path) -> _Run:
    """One read, in a fresh process."""
    if kind == "openssh sftp get":
        argv = [
            "sftp", "-q", "-b", "-", "-P", str(spec["port"]), "-i", spec["key"],
            "-o", f"UserKnownHostsFile={spec['known_hosts']}", "-o", "BatchMode=yes",
            f"{spec['user']}@127.0.0.1",
        ]  # fmt: skip
        batch = f'get "{spec["folder"]}/{spec["name"]}" "{out}"\n'
        began = time.perf_counter()
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert child.stdin is not None
        child.stdin.write(batch.encode())
        child.stdin.close()
        _, status, usage = os.wait4(child.pid, 0)  # sftp waits for its ssh: both are counted
        seconds = time.perf_counter() - began
        if status:
            raise SystemExit(f"sftp failed with status {status}")
        size = out.stat().st_size
        out.unlink()
        return _Run(seconds, size, usage.ru_utime + usage.ru_stime, math.nan)
    argv = [sys.executable, __file__, "--child", kind, json.dumps(spec)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=_ROOT)
    assert child.stdout is not None
    report = json.loads(child.stdout.read())
    if child.wait():
        raise SystemExit(f"{kind} failed with status {child.returncode}")
    return _Run(**report)


def main() -> None:
    """Generate, serve, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512, help="file size (default 512)")
    parser.add_argument("--gb", action="store_true", help="a 1 GB file (1024 MB)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median is shown")
    parser.add_argument("--default-mb", type=int, default=64, help="prefix read by the slow one")
    parser.add_argument(
        "--slow-reader", type=float, metavar="MB/S",
        help="also read once at this pace (a COPY slower than the network): memory must stay flat",
    )  # fmt: skip
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], json.loads(args.child[1]))
        return
    sys.path.insert(0, str(_ROOT / "tests"))
    from sftp_servers import start_openssh

    if not shutil.which("sftp") or not Path("/usr/sbin/sshd").exists():
        raise SystemExit("needs OpenSSH (sftp and sshd): run .ci/install-system-deps")
    size = (1024 if args.gb else args.size_mb) * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-sftp-") as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        csv = data / "bench.csv"
        generate(csv, size)
        size = csv.stat().st_size
        print(f"file: {size / 1e6:.0f} MB, {os.cpu_count()} CPUs, {args.repeat} rounds")
        with start_openssh(work / "sshd") as server:
            spec = {
                "port": server.port, "user": server.username, "key": str(server.client_key),
                "known_hosts": str(server.known_hosts), "folder": str(data), "name": csv.name,
                "limit": size,
            }  # fmt: skip
            runs: dict[str, list[_Run]] = {m: [] for m in _METHODS}
            for _ in range(args.repeat):
                for method in _METHODS:
                    limit = args.default_mb * 1024 * 1024 if method == "paramiko default" else size
                    runs[method].append(_measure(method, {**spec, "limit": limit}, work / "got"))
            if args.slow_reader:
                pace = _BLOCK / (args.slow_reader * 1e6)
                for method in ("reconcile source", "paramiko prefetch"):
                    slow = f"{method}, slow reader"
                    runs[slow] = [_measure(slow, {**spec, "pace": pace}, work / "got")]
        _report(runs, size)


def _report(runs: dict[str, list[_Run]], size: int) -> None:
    base = statistics.median(r.rate for r in runs["openssh sftp get"])
    print(
        f"{'method':<32}{'MB/s':>6}{'vs sftp':>9}{'CPU s/GB':>10}{'peak RSS MB':>13}  rounds (MB/s)"
    )
    for method, measured in runs.items():
        rate = statistics.median(r.rate for r in measured)
        cpu = statistics.median(r.cpu / r.nbytes * 1e9 for r in measured)
        peak = max(r.rss_mb for r in measured)
        rss = "-" if math.isnan(peak) else f"{peak:.0f}"
        each = " ".join(f"{r.rate:.0f}" for r in measured)
        print(f"{method:<32}{rate:>6.0f}{rate / base:>8.2f}x{cpu:>10.2f}{rss:>13}  {each}")
    for method, measured in runs.items():
        assert method == "paramiko default" or all(r.nbytes == size for r in measured), method


if __name__ == "__main__":
    main()
