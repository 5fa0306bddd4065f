# reconcile serve in a container. Mount the schedules folder (a ConfigMap, as a directory, not with
# subPath) at /etc/reconciler/schedules.d and set RECONCILER_DATABASE_URL. The image runs as a
# numeric non-root user and works with a read-only root file system: its only state folder is the
# /var/lib/reconcile volume (mount a volume or a tmpfs there).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY reconciler ./reconciler
# Without the [embedded] extra: a container always names its database.
RUN pip install --no-cache-dir -c constraints.txt . \
    && rm -rf /src \
    && mkdir -p /etc/reconciler/schedules.d /var/lib/reconcile \
    && chown 10001:10001 /var/lib/reconcile

ENV RECONCILER_SCHEDULES_DIR=/etc/reconciler/schedules.d \
    RECONCILER_STATE_DIR=/var/lib/reconcile \
    RECONCILER_HTTP_ADDRESS=0.0.0.0:8080 \
    RECONCILER_LOG_FORMAT=json
VOLUME ["/var/lib/reconcile"]
WORKDIR /var/lib/reconcile
USER 10001:10001
EXPOSE 8080

# reconcile is PID 1: it handles SIGTERM itself (running imports get RECONCILER_SHUTDOWN_GRACE
# seconds; keep Kubernetes' terminationGracePeriodSeconds above it).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['RECONCILER_HTTP_ADDRESS'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["reconcile"]
CMD ["serve"]
