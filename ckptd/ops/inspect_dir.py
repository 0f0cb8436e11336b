"""``ckptd inspect DIR``: describe a directory checkpoint; nothing in it is executed or imported.

Which trainer wrote it and whether its completion marker is there (``formats.trainer_dirs``), and
each of its files with size, sha256 and, for a pickle-bearing one, the verdict the manifest
records (``runs.dir_checkpoints.hash_and_judge``). The directory is listed and read no-follow
from its parent (``fs.runfs``): a symlink inside is shown under ``irregular``, never followed.
It is *sound* when its marker says it is complete and no file's verdict refuses it; files that
``torch.load(weights_only=True)`` would refuse (a Trainer's ``training_args.bin``) make it not
sound here, though ckptd keeps such a directory (docs/security.md, "Verdicts").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckptd.formats import Format
from ckptd.formats.trainer_dirs import judge
from ckptd.fs.runfs import RunFS
from ckptd.manifest.model import FileRecord, directory_digest
from ckptd.runs.dir_checkpoints import hash_and_judge, unsafe_files
from ckptd.runs.dir_listing import list_directory


@dataclass(frozen=True)
class DirectoryReport:
    path: Path
    format: Format
    complete: bool
    completion: str  # the marker that decided, one line
    size: int
    sha256: str
    files: tuple[FileRecord, ...]
    irregular: tuple[str, ...]

    @property
    def unsafe(self) -> list[FileRecord]:
        return unsafe_files(self.files)

    @property
    def sound(self) -> bool:
        return self.complete and not self.unsafe

    def as_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "format": str(self.format),
            "complete": self.complete,
            "completion": self.completion,
            "size": self.size,
            "sha256": self.sha256,
            "sound": self.sound,
            "files": [item.to_json_obj() for item in self.files],
            "irregular": list(self.irregular),
        }


def inspect_directory(path: Path) -> DirectoryReport:
    """Describe the directory ``path``. CkptdError/OSError (naming it) when it cannot be read."""
    fs = RunFS(path.parent)
    walked = list_directory(fs, path.name)
    completion = judge(walked.listing)
    files = hash_and_judge(fs, path.name, walked.listing)
    return DirectoryReport(
        path=path,
        format=completion.format,
        complete=completion.complete,
        completion=completion.reason,
        size=walked.listing.size,
        sha256=directory_digest((item.path, item.sha256 or "") for item in files),
        files=files,
        irregular=walked.irregular,
    )
