"""One module per group of commands; ``reconciler.cli`` imports them lazily by name."""
