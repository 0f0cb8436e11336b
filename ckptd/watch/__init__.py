"""Noticing checkpoints: watchdog events, filesystems inotify can see, and files settling until complete."""
