"""The defaults of ``state_dir`` and ``manifest.filename``, in a module of their own.

They are also what a run is recognised by when no config says otherwise, and where ``ckptd convert``
archives originals outside any run. ``ckptd.config.model`` (0.008 s to import: every config section
is a frozen dataclass) re-exports them; ``ckptd.cli.convert_args`` takes them from here, so that
``ckptd convert`` can start hashing its input before that import (README, "Benchmarks").
"""

DEFAULT_STATE_DIR = ".ckptd"
DEFAULT_MANIFEST_FILENAME = "ckptd-manifest.json"
