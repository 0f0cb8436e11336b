"""A root's runs and each run's checkpoints: inventory, state directory, operator access, rebuilds."""
