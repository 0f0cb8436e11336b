"""Files on disk: durable atomic writes, file identity, and no-follow operations under a run directory."""
