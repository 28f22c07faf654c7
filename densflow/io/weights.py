"""The authors' released weights, one command away: fetch, verify, unpack, convert, cache.

``python -m densflow download weights`` (:func:`download_weights`) runs five steps, each safe to
interrupt and rerun:

1. **fetch** the Google Drive file that the official README links (:data:`DRIVE_FILE_ID`) with
   ``gdown`` (the optional ``download`` extra) into ``<cache>/downloads/``. gdown writes a ``.part``
   file and resumes it; the finished file is called ``weights.unverified`` until step 2 passes, and
   only then is it renamed to ``weights.archive``.
2. **verify** its sha256 against :data:`ARCHIVE_SHA256`, or — while that constant is ``None`` —
   against the digest the first download recorded in ``weights.sha256``. A mismatch deletes the
   file and stops with an error; nothing from it is unpacked.
3. **unpack** it (:mod:`densflow.io.archive`: zip or tar, told apart by content) into the cache's
   staging folder; no member lands outside it.
4. **find** every run folder, at any depth: a folder with ``args.pickle`` and
   ``check/checkpoint.pt``.
5. **convert** each with :func:`densflow.io.official.load_official` into a model directory
   (:mod:`densflow.io.pretrained`) named after its dataset — ``<cache>/models/cifar10`` and so on.
   A run folder that does not convert is reported in one line and skipped.

Every result appears by a rename once complete (the archive, each model directory, and last a
``weights.done`` record), so a later call never takes a partial file or folder for a finished one.
One call at a time works on a cache: the others wait for it (:class:`~densflow.io.locks.FolderLock`
on the cache), then find its models done. What a killed call leaves (an unpacked tree, half a model
directory) lies in the cache's staging folder, which the next call empties; gdown's partial
download stays, so that the next call resumes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from ..data import MissingDependencyError, require
from ..model import DenseFlow
from ..utils.errors import InputError, first_line
from . import pretrained
from .archive import ArchiveError, archive_format, unpack
from .checkpoint import CheckpointError
from .files import atomic_write_text, write_error
from .locks import STAGING_NAME, FolderLock
from .official import IMAGE_SIZES, load_official, read_official_args
from .pretrained import CONFIG_NAME, WEIGHTS_NAME, is_model_dir, save_pretrained

__all__ = [
    "ARCHIVE_SHA256",
    "DRIVE_FILE_ID",
    "DRIVE_URL",
    "WeightsError",
    "convert_runs",
    "download_weights",
    "fetch_archive",
    "find_run_folders",
    "verify_archive",
]

DRIVE_FILE_ID = "1CAX-TV4ZTtNbb57UYTn6j-rY7CQFpocp"
"""The Google Drive file that the official README links: the authors' run folders."""
DRIVE_URL = f"https://drive.google.com/file/d/{DRIVE_FILE_ID}/view"

ARCHIVE_SHA256: str | None = None
"""sha256 of the authors' archive. Not yet known: fill it in (lower-case hex) from the line that
``densflow download weights`` prints on its first download (also stored in
``<cache>/downloads/weights.sha256``). Until then each cache checks later downloads against the
digest its first download recorded."""

ARCHIVE_NAME, UNVERIFIED_NAME = "weights.archive", "weights.unverified"
DIGEST_NAME, DONE_NAME = "weights.sha256", "weights.done"


class WeightsError(CheckpointError):
    """The authors' weights cannot be fetched, verified, unpacked or converted."""


def _say(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------- fetch and verify
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_archive(path: Path, digest_file: Path, *, delete: bool = True) -> str:
    """Check ``path``'s sha256; return it.

    The expected digest is :data:`ARCHIVE_SHA256`, else the one recorded in ``digest_file``; with
    neither, the digest is recorded there (and printed) for later calls. On a mismatch the file
    is deleted (when ``delete``: only the cache's own download) and :class:`WeightsError` is
    raised.
    """
    digest = _sha256(path)
    if ARCHIVE_SHA256 is not None:
        expected, origin = ARCHIVE_SHA256.lower(), "densflow.io.weights.ARCHIVE_SHA256"
    elif digest_file.is_file():
        expected = digest_file.read_text().split()[0].lower()
        origin = f"the digest the first download recorded in {digest_file}"
    else:
        atomic_write_text(digest_file, f"{digest}  {ARCHIVE_NAME}\n")
        _say(
            f"sha256 {digest} ({path.name}): recorded in {digest_file}; later downloads are "
            "checked against it"
        )
        return digest
    if digest != expected:
        fate = "deleted" if delete else "left in place"
        if delete:
            path.unlink(missing_ok=True)
        raise WeightsError(
            f"{path} has sha256 {digest}, expected {expected} ({origin}): the file is corrupt or "
            f"not the authors' archive and was {fate}; run the command again to download it anew"
        )
    return digest


def fetch_archive(downloads: Path) -> tuple[Path, str]:
    """The verified archive in ``downloads`` (downloaded with gdown if needed) and its sha256."""
    downloads.mkdir(parents=True, exist_ok=True)
    final, digest_file = downloads / ARCHIVE_NAME, downloads / DIGEST_NAME
    if final.is_file():  # checked again: a file at rest can be damaged too
        return final, verify_archive(final, digest_file)
    try:
        gdown = require("gdown", "download", "downloading the authors' weights")
    except MissingDependencyError as err:
        raise MissingDependencyError(
            f"{err}; or download {DRIVE_URL} in a browser and run densflow download weights "
            "--from FILE"
        ) from err
    unverified = downloads / UNVERIFIED_NAME
    _say(f"downloading the authors' weights from {DRIVE_URL} (interrupted, rerun to resume)")
    try:
        # gdown keeps the bytes in "<output>XXXXXXXX.part" and resumes it; the output appears
        # complete, and a finished but unverified output is returned again on resume.
        result = gdown.download(id=DRIVE_FILE_ID, output=str(unverified), quiet=False, resume=True)
    except OSError as err:  # requests' ConnectionError and Timeout are OSErrors
        raise WeightsError(
            f"cannot reach Google Drive ({first_line(err)}): check the internet connection and "
            "run the command again (it resumes), or download the file in a browser and pass it "
            "with --from FILE"
        ) from err
    except Exception as err:  # gdown's refusals: quota exceeded, permission, changed page
        raise WeightsError(
            f"Google Drive did not serve {DRIVE_URL} ({first_line(err)}): try again later, or "
            "download it in a browser and run densflow download weights --from FILE"
        ) from err
    if result is None or not unverified.is_file():
        raise WeightsError(
            f"gdown returned without writing {unverified}: download {DRIVE_URL} in a browser "
            "and run densflow download weights --from FILE"
        )
    digest = verify_archive(unverified, digest_file)
    os.replace(unverified, final)
    return final, digest


# ----------------------------------------------------------------------------- find and convert
def find_run_folders(root: Path) -> list[Path]:
    """Every folder under ``root`` (``root`` included) with ``args.pickle`` and
    ``check/checkpoint.pt``, in path order. Links to folders are not followed."""
    runs = []
    for folder, _, files in os.walk(root, followlinks=False):
        here = Path(folder)
        if "args.pickle" in files and (here / "check" / "checkpoint.pt").is_file():
            runs.append(here)
    return sorted(runs)


def _model_name(dataset: str, run: Path, taken: set[str]) -> str:
    if dataset not in taken:
        return dataset
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.name).strip("-.") or "run"
    name, k = f"{dataset}-{stem}", 2
    while name in taken:
        name, k = f"{dataset}-{stem}-{k}", k + 1
    return name


def _source_of(directory: Path) -> str | None:
    try:
        return json.loads((directory / CONFIG_NAME).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None


def _install(model: DenseFlow, target: Path, staging: Path, dataset: str, source: str) -> None:
    """Write the model directory in ``staging``, then rename its two files into ``target``: a
    kill while writing leaves nothing in ``target``, and other files of ``target`` stay."""
    tmp = staging / f"{target.name}.{secrets.token_hex(4)}"
    save_pretrained(model, tmp, dataset=dataset, source=source, staging=staging)
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME):  # config.json last: then it is a model dir
            os.replace(tmp / name, target / name)
    except OSError as err:
        raise write_error(target, err) from err
    tmp.rmdir()


def convert_runs(
    tree: Path,
    models: Path,
    *,
    label: str,
    staging: Path,
    trust_checkpoint: bool = False,
    report: Callable[[str], None] = _say,
) -> dict[str, Path]:
    """Convert every run folder under ``tree`` into ``models/<dataset>``; name → directory.

    ``label`` names where the run folders came from (``sha256:<hex>`` of an archive, or a folder);
    each model records ``<label>/<run folder>`` as its source. For an archive, a model directory
    that records the same source is already done and is kept; a folder's runs are always
    converted (its content may have changed). The first run folder of a dataset (in path order)
    gets the dataset's name, any other one ``<dataset>-<folder name>``. A run folder that cannot
    be read is reported in one line and skipped; a model that cannot be written stops the call.
    ``staging`` holds the model directories being written (on the file system of ``models``).
    """
    runs, reuse = find_run_folders(tree), label.startswith("sha256:")
    if not runs:
        raise WeightsError(
            f"no run folder (args.pickle + check/checkpoint.pt) anywhere in {tree}: this is not "
            "the authors' archive"
        )
    done: dict[str, Path] = {}
    for run in runs:
        rel = run.relative_to(tree).as_posix()
        try:
            dataset = read_official_args(run / "args.pickle").dataset
            if dataset not in IMAGE_SIZES:
                raise CheckpointError(
                    f"args.pickle names dataset {dataset!r}, not one of {sorted(IMAGE_SIZES)}"
                )
            name = _model_name(dataset, run, set(done))
            target, source = models / name, f"{label}/{rel}"
            if reuse and is_model_dir(target) and _source_of(target) == source:
                report(f"{name}: {target} (already converted from {rel})")
                done[name] = target
                continue
            model = load_official(run, trust_checkpoint=trust_checkpoint)
        except (InputError, OSError) as err:  # this run folder's files: the others may be fine
            report(f"skipped run folder {rel or '.'}: {first_line(err)}")
            continue
        _install(model, target, staging, dataset, source)
        n = sum(p.numel() for p in model.parameters())
        side = model.config.image_size
        report(f"{name}: {target} ({n:,} parameters, {side}×{side} images, from {rel or '.'})")
        done[name] = target
    if not done:
        hint = (
            ""
            if trust_checkpoint
            else "; if they failed to load with weights_only and you trust their source, rerun "
            "with --trust-checkpoint"
        )
        raise WeightsError(
            f"none of the {len(runs)} run folders in {tree} converted (see above){hint}"
        )
    return done


def _already_done(downloads: Path, models: Path) -> dict[str, Path] | None:
    """The models of a finished earlier call for the expected archive, if all are still there."""
    try:
        record = json.loads((downloads / DONE_NAME).read_text())
    except (OSError, ValueError):
        return None
    expected = ARCHIVE_SHA256
    if expected is None and (downloads / DIGEST_NAME).is_file():
        expected = (downloads / DIGEST_NAME).read_text().split()[0]
    if not isinstance(record, dict) or expected is None or record.get("sha256") != expected:
        return None
    runs = record.get("models")
    if not isinstance(runs, dict) or not runs:
        return None
    for name, rel in runs.items():
        path = models / name
        if not is_model_dir(path) or _source_of(path) != f"sha256:{expected}/{rel}":
            return None
    return {name: models / name for name in runs}


def _check_source(source: Path, cache: Path) -> None:
    """The user's archive or folder exists, is one, and is not inside what this call rewrites."""
    if not source.exists():
        raise WeightsError(f"--from {source}: no such file or folder")
    if source.is_file() and archive_format(source) is None:
        raise ArchiveError(
            f"--from {source} is neither a zip nor a tar archive nor a folder: give the authors' "
            "archive, or the folder it unpacks into"
        )
    real, rewritten = source.resolve(), [cache.resolve() / d for d in ("models", STAGING_NAME)]
    if any(real == d or d in real.parents for d in rewritten):
        raise WeightsError(
            f"--from {source} lies inside the cache's {rewritten[0].parent}, which this command "
            "rewrites; move it out of the cache first"
        )


def download_weights(
    cache_dir: str | os.PathLike | None = None,
    *,
    source: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
) -> dict[str, Path]:
    """Fetch, verify, unpack and convert the authors' weights into the cache; name → directory.

    Arguments:
        cache_dir: the cache folder (default ``$DENSFLOW_CACHE``, else ``~/.cache/densflow``).
        source: an archive or an unpacked folder you downloaded yourself (no network then). An
            archive is checked against :data:`ARCHIVE_SHA256` when that is known, and never
            deleted.
        trust_checkpoint: allow full unpickling of a checkpoint that ``weights_only`` loading
            refuses (see :func:`densflow.io.official.load_official`).

    After it, ``DenseFlow.from_pretrained("cifar10")`` (and each other dataset found) loads from
    the cache. Another call on the same cache waits for this one.
    """
    cache = pretrained.cache_dir(cache_dir)
    given = None if source is None else Path(source).expanduser()
    if given is not None:
        _check_source(given, cache)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(cache, err, action="create the cache") from err
    waiting = f"another densflow process is using the cache {cache}; waiting for it to finish"
    with FolderLock(cache, wait=True, on_wait=lambda: _say(waiting)) as lock:
        return _download(cache, lock.staging, given, trust_checkpoint)


def _download(
    cache: Path, staging: Path, source: Path | None, trust_checkpoint: bool
) -> dict[str, Path]:
    downloads, models = cache / "downloads", cache / "models"
    models.mkdir(exist_ok=True)
    if source is None:
        found = _already_done(downloads, models)
        if found is not None:
            for name, path in found.items():
                _say(f"{name}: {path} (already downloaded and converted)")
            return found
        archive, digest = fetch_archive(downloads)
    else:
        archive, digest = source, None
        if archive.is_dir():
            label = str(archive.resolve())
            return convert_runs(
                archive, models, label=label, staging=staging, trust_checkpoint=trust_checkpoint
            )
        if ARCHIVE_SHA256 is not None:
            digest = verify_archive(archive, downloads / DIGEST_NAME, delete=False)
        else:
            digest = _sha256(archive)
            _say(f"sha256 {digest} ({archive})")
    tree = staging / f"unpacked.{secrets.token_hex(4)}"
    try:
        _say(f"unpacking {archive}")
        unpack(archive, tree)
        done = convert_runs(
            tree, models, label=f"sha256:{digest}", staging=staging,
            trust_checkpoint=trust_checkpoint,
        )  # fmt: skip
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    if source is None:  # written last: the record that this archive is fully converted
        record = {
            "sha256": digest,
            "models": {name: _source_of(path).split("/", 1)[1] for name, path in done.items()},
        }
        atomic_write_text(downloads / DONE_NAME, json.dumps(record, indent=2) + "\n")
    return done
