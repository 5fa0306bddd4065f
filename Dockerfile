# reconcile serve in a container. Mount the schedules folder (a ConfigMap, as a directory, not with
# subPath) at /etc/reconciler/schedules.d and set RECONCILER_DATABASE_URL. The image runs as a
# numeric non-root user and works with a read-only root file system: its only state folder is the
# /var/lib/reconcile volume (mount a volume or a tmpfs there).
#
# Two stages: the first installs the package into a virtual environment at /opt/reconcile; the
# second copies that environment into a clean slim image. The running image holds no pip and no
# setuptools (neither in the environment nor in the base Python): nothing in it installs code.

FROM python:3.11-slim AS build

# PIP_CONSTRAINT pins the build's own setuptools too, not only what is installed.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/constraints.txt

WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY reconciler ./reconciler
# The environment gets no pip of its own: this stage's pip installs into it (pip --python).
# Without the [embedded] extra: a container always names its database.
RUN python -m venv --without-pip /opt/reconcile \
    && pip --python /opt/reconcile/bin/python install --no-cache-dir -c constraints.txt .

FROM python:3.11-slim

# Where the image was built from: docker build --build-arg SOURCE=https://github.com/you/reconcile
ARG SOURCE=https://github.com/your-org/reconcile
LABEL org.opencontainers.image.title="reconcile" \
      org.opencontainers.image.description="Declarative, GitOps-style reconciler for recurring CSV to PostgreSQL imports" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/reconcile/bin:$PATH

RUN python -m pip uninstall --yes --no-cache-dir --disable-pip-version-check pip setuptools wheel \
    && mkdir -p /etc/reconciler/schedules.d /var/lib/reconcile \
    && chown 10001:10001 /var/lib/reconcile
COPY --from=build /opt/reconcile /opt/reconcile

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
