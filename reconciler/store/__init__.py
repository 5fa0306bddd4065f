"""PostgreSQL: schema and migrations, rows, locks, and the embedded default server."""
