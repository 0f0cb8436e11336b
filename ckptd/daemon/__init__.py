"""The daemon (``ckptd run``): watchers, workers, scheduler, health, metrics and logs."""
