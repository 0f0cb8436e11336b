"""Log lines as the config's ``log:`` section asks (text or JSON on stderr), for the daemon and for
the commands that act on runs alike (docs/operations.md, "Logs and metrics")."""
