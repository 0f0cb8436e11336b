"""The config model: typed, frozen values for every key in ckptd.yaml, and reading them from YAML."""
