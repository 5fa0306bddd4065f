"""The import engine: sources (local, SFTP), COPY streaming, job runs and callbacks."""
