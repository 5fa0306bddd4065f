# reconcile in a container: mount the schedules folder (often a ConfigMap) at /config/schedules.d
# and point RECONCILER_DATABASE_URL at the management database.
FROM python:3.11-slim

RUN useradd --system --create-home --home-dir /var/lib/reconcile reconcile
WORKDIR /app
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
RUN pip install --no-cache-dir .

ENV RECONCILER_SCHEDULES_DIR=/config/schedules.d \
    RECONCILER_STATE_DIR=/var/lib/reconcile \
    RECONCILER_HTTP_ADDRESS=0.0.0.0:8080 \
    RECONCILER_LOG_FORMAT=json
USER reconcile
EXPOSE 8080
ENTRYPOINT ["reconcile"]
# One reconcile pass; the long-running daemon (`serve`) replaces this when it ships.
CMD ["apply"]
