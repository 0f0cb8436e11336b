"""Identify a file and, for an SB2 or SB3 zip, verify it: one open, one read, one central directory.

What the daemon asks of every new file (``ckptd.isolation.child``, the ``examine`` request):
``identify(path)`` and then, for a zip labelled ``sb2-zip`` or ``sb3-zip``, ``verify_zip(path)``.
Done as those two calls, a small SB3 zip was opened three times, its central directory parsed six
times (the label, the verdict, the verification, and once for each of the three torch zips inside
it, read through zipfile's member reader with its rewinding seeks), its ``data`` read twice and
every member's bytes read again for its CRC. Here the file is opened once; a file up to
``SNIFF_BYTES`` is read once into memory and parsed from there (a larger one from the file); its
central directory and ``check_structure`` are computed once and shared by the verdict
(``judge_sb3_archive``) and the verification (``examine_archive``), whose member reads go through
one :class:`ckptd.formats.zipmembers.SharedMembers`. The answer is the one the two calls give:
the same label, verdict and report, problem for problem (``tests/test_onepass.py`` compares them
on every fixture and on broken, truncated and hostile variants). Anything that is not a zip is
identified as ``identify`` does it, from the same open file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import BinaryIO

from ckptd.formats import VERDICT_FORMATS, Format
from ckptd.formats.safetensors import header_length_of
from ckptd.formats.sniff import (
    SNIFF_BYTES,
    ZIP_MAGIC,
    Identification,
    identify,
    identify_handle,
    judged,
    unreadable_zip,
    zip_identification,
)
from ckptd.formats.verdict_files import judge_sb3_archive, judge_torch_archive
from ckptd.formats.verify import VerifyReport, report_of, verify_zip
from ckptd.formats.zipexam import examine_archive
from ckptd.formats.zipmembers import FileImage, SharedMembers
from ckptd.formats.zipread import ZIP_READ_ERRORS, check_structure
from ckptd.fs.files import open_regular_nofollow
from ckptd.limits import DEFAULT_LIMITS, Limits

VERIFIED_FORMATS = frozenset({Format.SB2_ZIP, Format.SB3_ZIP})


def identify_and_verify(
    path: Path, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[Identification, VerifyReport | None]:
    """``identify(path)``, and ``verify_zip(path, limits=limits)`` when that says SB2 or SB3 zip
    (else None). Raises what ``identify`` raises when the file cannot be opened."""
    source = str(path)
    with open_regular_nofollow(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(min(size, SNIFF_BYTES) or SNIFF_BYTES)
        if not head.startswith(ZIP_MAGIC) or header_length_of(head, size) is not None:
            return identify_handle(handle, source, head), None
        image = head if len(head) == size else None
        stream: BinaryIO = FileImage(image) if image is not None else handle
        stream.seek(0)
        try:
            archive = zipfile.ZipFile(stream)
        except ZIP_READ_ERRORS as err:
            return unreadable_zip(err, size), None
        with archive:
            found = zip_identification(archive, size)
            if found.format is Format.UNKNOWN:
                return found, None  # no verdict, no verification: nothing else to read
            try:
                structure = check_structure(archive, stream, size)
            except ZIP_READ_ERRORS:
                structure = None
            if structure is None:
                # Headers zipfile cannot even walk: the separate calls say what they say of it.
                return _separately(path, limits)
            members = SharedMembers(archive, image)
            if found.format is Format.SB3_ZIP:
                found = judged(found, lambda: judge_sb3_archive(members, structure, source))
            elif found.format in VERDICT_FORMATS:
                found = judged(found, lambda: judge_torch_archive(members, stream, size, source))
            if found.format not in VERIFIED_FORMATS:
                return found, None
            exam = examine_archive(source, stream, size, members, structure, True, limits)
            return found, report_of(exam)


def _separately(path: Path, limits: Limits) -> tuple[Identification, VerifyReport | None]:
    found = identify(path)
    if found.format not in VERIFIED_FORMATS:
        return found, None
    return found, verify_zip(path, limits=limits)
