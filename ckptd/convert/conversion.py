"""Convert one legacy stable-baselines pickle into the SB2 zip format, safely and verifiably.

The order of operations is the safety argument:
1. read the source once (no TOCTOU) and parse it statically — nothing is executed; large array
   payloads are not kept in memory but copied from the still-open source when written (in the
   kernel where it can), the file's identity checked after the copy
   (``ckptd.convert.legacy.open_legacy_file``); its sha256 is taken by a second read in a helper
   thread meanwhile, tied to the first by their CRC-32s and the file's stat before the rename
   (``ckptd.convert.legacy_stream.SourceDigest``);
2. write the zip to a temp file beside the target and fsync it, while
3. the temp file is re-read once and verified (headers byte for byte against the layout, each
   copied array's bytes against the CRC-32 of the source's first read; central directory, the
   pickles in ``data``; its sha256 taken from the bytes read back); give it the original's mode,
   owner and times — only then rename it into place and fsync the directory;
4. before an original is archived or deleted, verify the renamed zip completely, exactly as
   ``ckptd verify`` does (``ckptd.formats.verify``: CRCs, JSON, npy headers, every
   ``:serialized:`` pickle through the allowlist); a zip that fails is removed, the original stays;
5. only after that, and only if the source is unchanged since it was read, archive or delete it,
   walking from the run's directory with no symlink followed (``ckptd.fs.runfs``): a planted
   ``.ckptd`` or ``.ckptd/legacy/<dir>`` symlink is refused, never moved through.
``kill -9`` at any instant leaves the original intact and never a partial zip under the final name;
a rerun after a crash recognizes an already-written, identical zip and finishes step 5.

The zip is the same checkpoint in another format: it keeps the original's times (retention and
``status`` see its real age), its mode and owner (never wider), and its member timestamps come
from the original's mtime, so converting the same file twice gives the same bytes
(docs/conversion.md).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ckptd.config.model import DEFAULT_STATE_DIR
from ckptd.convert.legacy import open_legacy_file
from ckptd.convert.naming import zip_path_for
from ckptd.errors import ConversionError, FileChangedError, FormatError, VerifyError
from ckptd.formats import Format
from ckptd.formats.datajson import encode_data_json
from ckptd.formats.model import FileParamArray, LegacyCheckpoint, OpaqueValue, Param
from ckptd.formats.npy import read_npy_header
from ckptd.formats.sb2meta import guess_algorithm, guess_sb2_version
from ckptd.formats.sb2zip import write_checked_sb2_zip, zip_date_time
from ckptd.formats.sniff import identify
from ckptd.formats.verify import verify_zip
from ckptd.fs import files as fsio
from ckptd.fs.runfs import RunFS
from ckptd.fs.second_read import DigestRead
from ckptd.limits import DEFAULT_LIMITS, Limits

logger = logging.getLogger(__name__)

OriginalAction = Literal["keep", "archive", "delete"]
Status = Literal["converted", "already-converted", "already sb2-zip"]
_HASH_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class ConversionOutcome:
    """What happened to one input; every field is reportable as JSON and in the manifest."""

    source: Path
    status: Status
    output: Path
    output_sha256: str
    output_size: int
    source_sha256: str | None = None
    algorithm: str | None = None
    sb2_version: str | None = None
    params_count: int = 0
    params_bytes: int = 0
    carries_code: tuple[str, ...] = ()
    original: Literal["kept", "archived", "deleted"] = "kept"
    archived_to: Path | None = None
    globals: tuple[str, ...] = field(default=(), repr=False)
    notes: tuple[str, ...] = ()  # what the conversion did that a reader should know (one line each)


@contextlib.contextmanager
def _numpy_imported_beside() -> Iterator[None]:
    """numpy (0.03-0.05 s to import) is first needed by the parse, after the first pass over the
    file, which needs none of it: a process that has not imported it yet (``ckptd convert``)
    imports it in a helper thread meanwhile (README, "Benchmarks"), joined before this returns."""
    if "numpy" in sys.modules:
        yield
        return
    importer = threading.Thread(target=_import_numpy, name="ckptd-import-numpy")
    importer.start()
    try:
        yield
    finally:
        importer.join()


def _import_numpy() -> None:
    with contextlib.suppress(ImportError):  # the parse imports it again and says so
        import numpy  # noqa: F401


def convert_file(
    source: Path,
    *,
    output: Path | None = None,
    original: OriginalAction = "keep",
    state_dir: str = DEFAULT_STATE_DIR,
    allow_code: bool = True,
    param_names: Sequence[str] | None = None,
    archive_path: Path | None = None,
    archive_base: Path | None = None,
    limits: Limits = DEFAULT_LIMITS,
    keep_if_unwritable: bool = False,
    fence: Callable[[], None] | None = None,
    source_read: DigestRead | None = None,
) -> ConversionOutcome:
    """Convert ``source`` (a legacy SB2 pickle) to an SB2 zip; an existing valid SB2 zip is verified.

    With ``original="archive"`` the source moves to ``archive_path`` when given (the daemon passes
    the run's ``<state_dir>/legacy/<relative path>``), else to ``<state_dir>/legacy/`` beside it;
    an archived name that is taken gets a numeric suffix, never an overwrite. The move (and a
    delete) walks from ``archive_base`` (the daemon passes the run directory; default: the
    source's directory) with no symlink followed below it; ``archive_path`` must lie under it.

    Raises UnsafeCheckpoint (refused: the file references code outside the allowlist),
    FormatError (broken or not a stable-baselines checkpoint), ConversionError, VerifyError or
    FileChangedError; in every such case the source is left byte-for-byte untouched. A file over
    ``limits`` is refused (BudgetExceeded, an UnsafeCheckpoint) before any value is walked.

    With ``keep_if_unwritable`` (``ckptd convert``), an original that cannot be archived or deleted
    because its directory is read-only or not ours to change is kept, and a note says so: the
    conversion itself succeeded (e.g. ``-o`` wrote the zip elsewhere).

    ``fence`` is called right before the zip is renamed into place and right before the original
    is archived or deleted (the daemon checks its run's lease there: README, "Several daemons on
    one root"); what it raises propagates with the source untouched and no zip left behind, or,
    raised before the original's move, with the verified zip in place and the original kept.

    ``source_read``: a read of ``source`` started earlier for its sha256 (``ckptd convert`` starts
    one before it imports this module: ``ckptd.cli.convert_args``); it is used instead of a
    helper thread's, and closed when the conversion's read of the file ends (else by the caller).
    """
    with _numpy_imported_beside():
        source = Path(source)
        identification = identify(source)
        if identification.format is Format.SB2_ZIP:
            return _already_zip(source, limits)
        if identification.format is not Format.SB2_PICKLE:
            raise FormatError(
                f"not a legacy stable-baselines pickle (identified as {identification.format})",
                path=str(source),
            )
        target = Path(output) if output is not None else zip_path_for(source)
        if target.resolve() == source.resolve():
            raise ConversionError(
                "the output would overwrite the input; name another with -o", path=str(source)
            )

        judged = os.stat(source, follow_symlinks=False)
        before = fsio.FileIdentity.of(judged)
        carried = fsio.CarriedAttributes.of(judged)  # taken before any read can move the atime
        with open_legacy_file(
            source,
            allow_code=allow_code,
            param_names=param_names,
            limits=limits,
            source_read=source_read,
        ) as (
            checkpoint,
            source_digest,
        ):
            if fsio.FileIdentity.of(os.stat(source, follow_symlinks=False)) != before:
                raise FileChangedError(
                    "changed while it was being read; will retry when it is stable",
                    path=str(source),
                )

            def before_rename() -> None:
                # The source is read for the last time (the copy): its sha256, from a second read
                # beside the conversion, must be of the bytes converted, or nothing is renamed.
                source_digest.sha256()
                if fence is not None:
                    fence()

            try:
                status, output_sha256, output_size = _write_or_match(
                    source, target, checkpoint, carried, before_rename
                )
                source_sha256 = source_digest.sha256()
            except ConversionError as err:
                if err.path is not None:
                    raise
                # The zip layer knows no file names; the one-line error must name the input.
                raise ConversionError(err.message, path=str(source)) from None
        if original != "keep" and status == "converted":
            _verify_before_disposal(source, target, limits)

        if original == "archive" and archive_path is None:
            archive_path = source.parent / state_dir / "legacy" / source.name
        base = source.parent if archive_base is None else Path(archive_base)
        notes = checkpoint.notes
        if fence is not None and original != "keep":
            fence()
        try:
            outcome_original, archived_to = _dispose_original(
                source, before, original, archive_path, base
            )
        except OSError as err:
            if not keep_if_unwritable or err.errno not in _UNWRITABLE:
                raise
            outcome_original, archived_to = "kept", None
            verb = "archived" if original == "archive" else "deleted"
            notes = (
                *notes,
                f"original kept, not {verb}: its directory is read-only here ({err.strerror or err})",
            )
        policy = _policy_global(checkpoint)
        algorithm = guess_algorithm(list(checkpoint.data), policy)
        version = guess_sb2_version(
            list(checkpoint.data),
            container="pickle",
            params_were_list=checkpoint.params_were_list,
            referenced_globals=checkpoint.globals,
            algorithm=algorithm,
        )
        # Debug only: the daemon pipeline logs each conversion with its run and file, the CLI prints it.
        logger.debug("converted %s -> %s (%s)", source, target, status)
        return ConversionOutcome(
            source=source,
            status=status,
            output=target,
            output_sha256=output_sha256,
            output_size=output_size,
            source_sha256=source_sha256,
            algorithm=algorithm,
            sb2_version=str(version),
            params_count=len(checkpoint.params),
            params_bytes=checkpoint.params_bytes,
            carries_code=checkpoint.carries_code,
            original=outcome_original,
            archived_to=archived_to,
            globals=checkpoint.globals,
            notes=notes,
        )


# Why an original cannot be moved or deleted that no retry will fix (convert_file's keep_if_unwritable).
_UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def _write_or_match(
    source: Path,
    target: Path,
    checkpoint: LegacyCheckpoint,
    carried: fsio.CarriedAttributes,
    before_rename: Callable[[], None] | None = None,
) -> tuple[Status, str, int]:
    """Write ``target`` (verified before it gets its name; ``before_rename`` runs last before the
    rename), or prove an existing one is this checkpoint's conversion (a rerun after a crash);
    (status, output sha256, output size)."""
    if target.exists() or target.is_symlink():
        try:
            _check_zip_matches(target, checkpoint, encode_data_json(checkpoint.data))
        except (FormatError, OSError) as err:
            raise ConversionError(
                f"{target.name} already exists and is not this checkpoint's conversion ({err}); not overwriting",
                path=str(source),
            ) from err
        output_sha256, output_size = fsio.sha256_file(target)
        return "already-converted", output_sha256, output_size
    # Written to a temp file, re-read and verified against the layout, and only then renamed.
    report = write_checked_sb2_zip(
        target,
        checkpoint.data,
        checkpoint.params,
        date_time=zip_date_time(carried.mtime_ns),
        attributes=carried,
        before_rename=before_rename,
    )
    return "converted", report.sha256, report.size


def _verify_before_disposal(source: Path, target: Path, limits: Limits) -> None:
    """The full ``verify`` of our own output before the original goes; on failure remove it."""
    report = verify_zip(target, limits=limits)
    if report.ok:
        return
    target.unlink(missing_ok=True)
    fsio.fsync_dir(target.parent)
    raise VerifyError(
        f"the written {target.name} failed verification and was removed, original left in place: "
        + "; ".join(report.problems),
        path=str(source),
    )


def _already_zip(source: Path, limits: Limits) -> ConversionOutcome:
    report = verify_zip(source, limits=limits)
    if not report.ok:
        raise VerifyError("; ".join(report.problems), path=str(source))
    digest, size = fsio.sha256_file(source)
    return ConversionOutcome(
        source=source,
        status="already sb2-zip",
        output=source,
        output_sha256=digest,
        output_size=size,
        params_count=report.params_count,
        params_bytes=report.params_bytes,
        carries_code=tuple(report.carries_code),
    )


def _check_zip_matches(path: Path, checkpoint: LegacyCheckpoint, data_json: bytes) -> None:
    """Prove an existing zip holds exactly this checkpoint (a rerun after a crash); VerifyError if not.

    Independent of the writer's layout: full verification, then members, JSON and every array's
    npy header and bytes compared with the source.
    """
    report = verify_zip(path)
    if not report.ok:
        raise VerifyError("; ".join(report.problems), path=str(path))
    with zipfile.ZipFile(path) as archive:
        if archive.namelist() != ["data", "parameters", "parameter_list"]:
            raise VerifyError(f"unexpected members {archive.namelist()}", path=str(path))
        if archive.read("data") != data_json:
            raise VerifyError("data member differs from the source's data", path=str(path))
        names = json.loads(archive.read("parameter_list"))
        if names != [param.name for param in checkpoint.params]:
            raise VerifyError(
                "parameter_list differs from the source's parameter order", path=str(path)
            )
        with archive.open("parameters") as outer, zipfile.ZipFile(outer) as npz:
            for param in checkpoint.params:
                with npz.open(f"{param.name}.npy") as member:
                    header = read_npy_header(member)
                    if (header.descr, header.fortran_order, header.shape) != (
                        param.descr,
                        param.fortran_order,
                        param.shape,
                    ):
                        raise VerifyError(
                            f"{param.name}: npy header differs from the source", path=str(path)
                        )
                    if fsio.sha256_stream(member)[0] != _param_sha256(param):
                        raise VerifyError(
                            f"{param.name}: array bytes differ from the source", path=str(path)
                        )


def _param_sha256(param: Param) -> str:
    if not isinstance(param, FileParamArray):
        return hashlib.sha256(param.raw).hexdigest()
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(min(_HASH_CHUNK, max(1, param.nbytes))))
    for chunk in param.payload.chunks(buffer):  # checked against the first read at the end
        digest.update(chunk)
    return digest.hexdigest()


def _dispose_original(
    source: Path,
    judged: fsio.FileIdentity,
    action: OriginalAction,
    archive_path: Path | None,
    base: Path,
) -> tuple[Literal["kept", "archived", "deleted"], Path | None]:
    if action == "keep":
        return "kept", None
    fs = RunFS(base)
    source_rel = _below(base, source, "the original")
    current = fs.lstat(source_rel)
    if current is None or fsio.FileIdentity.of(current) != judged:
        raise FileChangedError(
            "changed after it was converted; the original was left in place", path=str(source)
        )
    if action == "archive":
        if archive_path is None:  # convert_file always sets it; never fall through to delete
            raise ConversionError("no archive location for the original", path=str(source))
        directory, _, name = _below(base, archive_path, "the archive location").rpartition("/")
        chosen = fs.move_unique(source_rel, directory, name, create=True)
        return "archived", base / directory / chosen
    fs.unlink(source_rel)
    return "deleted", None


def _below(base: Path, path: Path, what: str) -> str:
    """``path`` relative to ``base``, lexically (no link is resolved); ConversionError if outside."""
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        raise ConversionError(f"{what} is not inside {base}", path=str(path)) from None


def _policy_global(checkpoint: LegacyCheckpoint) -> str | None:
    """The policy class's "module.name" when it is pickled by reference (for algorithm inference)."""
    policy = checkpoint.data.get("policy")
    if isinstance(policy, OpaqueValue) and len(policy.globals) == 1:
        return policy.globals[0]
    return None
