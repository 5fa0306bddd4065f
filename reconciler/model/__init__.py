"""The pure core: documents, loading, cron and time zones, plans and rendering. No I/O here."""
