"""One set of file helpers for local paths and bucket URLs (``gs://`` and the other schemes epath
knows: ``s3://``, ``az://``, ``hf://``, each with its fsspec package; only ``gs://`` is tested).

Files a run, a conversion, an encoding or an evaluation reads or writes go through
``etils.epath``, the path layer Orbax itself uses: a URL reaches its store through fsspec
(gcsfs for ``gs://``), so a local path and a URL take the same code. What object stores do not
offer, and what is done instead:

- rename: an object appears whole when its upload ends, so a remote write is one upload; a
  local write goes to a temporary name that is then renamed (``write_bytes``);
- append: ``append_bytes`` uploads the new bytes as a temporary object and composes it onto the
  end of the object (GCS compose is server-side: each append costs the new bytes, not the whole
  object); stores without compose get the object rewritten;
- a real local file: libraries that open files themselves (rasterio, ``torch.save`` /
  ``torch.load``, NumPy memory maps) get one from ``local_copy`` (a download to a temporary
  directory) or ``local_output`` (written locally, uploaded when the block ends without error);
  a directory of outputs that must appear complete or not at all is written in a staging
  directory and published file by file (``staged_output_dir``).

Importing this module also keeps gcsfs and google-auth from repeating the same warnings at
every operation (``REPEATED_WARNINGS``: the first of each is shown).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

from etils import epath

_CHUNK_BYTES = 8 << 20


def is_remote(path) -> bool:
    """True for a URL (``scheme://...``), False for a local path."""
    return "://" in os.fspath(path)


class MissingStorePackage(RuntimeError):
    """A URL whose object store needs an fsspec package that is not installed."""


# The project's install extra that brings a store's fsspec package (pyproject.toml).
STORE_EXTRAS = {"gs": "gcs", "gcs": "gcs"}


def require_store(path) -> None:
    """Raises ``MissingStorePackage`` (one line: the URL, the package, the install command)
    when ``path`` is a URL whose store cannot be reached from this install, e.g. ``gs://``
    without gcsfs; before any work, instead of an ImportError deep inside the first write."""
    if not is_remote(path):
        return
    import fsspec

    scheme = os.fspath(path).split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as error:
        extra = STORE_EXTRAS.get(scheme)
        hint = f'; pip install "ramen-jax[{extra}]"' if extra else ""
        raise MissingStorePackage(f"{os.fspath(path)}: {error}{hint}") from None
    except ValueError:
        raise MissingStorePackage(
            f"{os.fspath(path)}: no file system for {scheme}:// (a local path, or gs://...)"
        ) from None


def as_path(path) -> epath.Path:
    """An ``epath.Path`` of a local path or URL. Give strings, not ``pathlib.Path``: pathlib
    turns ``gs://b/x`` into ``gs:/b/x``."""
    return epath.Path(path)


def absolute(path) -> epath.Path:
    """Local paths made absolute (Orbax refuses relative ones); URLs unchanged."""
    return as_path(path) if is_remote(path) else epath.Path(os.path.abspath(os.fspath(path)))


def join(base, *parts) -> str:
    return os.fspath(as_path(base).joinpath(*parts))


def makedirs(path) -> None:
    """Creates a local directory and its parents. Object stores have no directories (a path
    exists once an object is written under it), and fsspec's ``makedirs`` would create a
    missing *bucket*: a mistyped bucket name must fail, not appear, so URLs are left alone."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def write_bytes(path, data: bytes) -> None:
    """Writes a whole file so that readers see the old content or the new, never a part."""
    if is_remote(path):
        as_path(path).write_bytes(data)
        return
    path = os.fspath(path)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode())


def read_text(path) -> str:
    return as_path(path).read_text()


def _filesystem(url: str):
    """``(fsspec file system, path inside it)`` of a URL."""
    import fsspec

    return fsspec.core.url_to_fs(url)


def _composes(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "gs" in protocols


def append_bytes(path, data: bytes) -> None:
    """Appends ``data`` to a file or object, creating it where absent.

    On GCS the bytes are uploaded as ``<object>.append-<id>`` and composed onto the object, so a
    log appended to all run long costs what it gains, not its size at every append. GCS takes
    about one write per second to one object name: append in batches, not per line. A process
    killed between the two requests leaves the ``.append-<id>`` object behind (the log itself
    stays whole). Other stores have no compose: the object is read and written back whole.
    """
    if not data:
        return
    if not is_remote(path):
        with open(path, "ab") as file:
            file.write(data)
        return
    fs, key = _filesystem(os.fspath(path))
    if not fs.exists(key):
        fs.pipe_file(key, data)
    elif _composes(fs):
        part = f"{key}.append-{uuid.uuid4().hex}"
        fs.pipe_file(part, data)
        try:
            fs.merge(key, [key, part])
        finally:
            # Once composed the data is in; failing to delete the part must not make a caller
            # append it again.
            with contextlib.suppress(Exception):
                fs.rm_file(part)
    else:
        fs.pipe_file(key, fs.cat_file(key) + data)


def upload_file(local: str, path) -> None:
    with open(local, "rb") as source, as_path(path).open("wb") as target:
        shutil.copyfileobj(source, target, _CHUNK_BYTES)


def download_file(path, local: str) -> None:
    with as_path(path).open("rb") as source, open(local, "wb") as target:
        shutil.copyfileobj(source, target, _CHUNK_BYTES)


@contextlib.contextmanager
def local_copy(path) -> Iterator[str]:
    """A local file with ``path``'s content: ``path`` itself when local, otherwise a download
    into a temporary directory that is deleted when the block ends."""
    if not is_remote(path):
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory(prefix="ramen_jax_download_") as directory:
        local = os.path.join(directory, as_path(path).name)
        download_file(path, local)
        yield local


@contextlib.contextmanager
def local_output(path) -> Iterator[str]:
    """A local file name to write ``path`` through. Locally ``path + ".partial"``, renamed to
    ``path`` when the block ends without error (readers never see a half-written file); for a
    URL a temporary file uploaded to ``path`` then. On an error nothing is left behind."""
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="ramen_jax_upload_") as directory:
            local = os.path.join(directory, as_path(path).name)
            yield local
            upload_file(local, path)
        return
    partial = os.fspath(path) + ".partial"
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


@contextlib.contextmanager
def local_output_dir(path) -> Iterator[str]:
    """A local directory to write the files of directory ``path`` in: ``path`` itself (created)
    when local; for a URL a temporary directory whose files are uploaded under ``path`` when the
    block ends without error."""
    if not is_remote(path):
        makedirs(path)
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory(prefix="ramen_jax_upload_") as directory:
        yield directory
        for root, _, names in os.walk(directory):
            for name in sorted(names):
                local = os.path.join(root, name)
                upload_file(local, join(path, os.path.relpath(local, directory)))


class StagedOutput:
    """Files written in a local staging directory, then published under ``path`` whole.

    ``directory`` is where to write; ``publish()`` moves every file written since the last
    publish into ``path`` (created then) by rename when ``path`` is local (the staging
    directory is a hidden sibling of ``path``, on the same file system), by upload when it is
    a URL. A process killed mid-write leaves its files under the hidden staging name, never
    under their final names; ``staged_output_dir`` removes the staging directory on exit.
    """

    def __init__(self, path):
        self.path = path
        if is_remote(path):
            self.directory = tempfile.mkdtemp(prefix="ramen_jax_upload_")
        else:
            target = os.path.abspath(os.fspath(path))
            parent, name = os.path.split(target)
            os.makedirs(parent, exist_ok=True)
            self.directory = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)

    def publish(self) -> list[str]:
        published = []
        for root, _, names in os.walk(self.directory):
            for name in sorted(names):
                local = os.path.join(root, name)
                target = join(self.path, os.path.relpath(local, self.directory))
                if is_remote(self.path):
                    upload_file(local, target)
                    os.remove(local)
                else:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.replace(local, target)
                published.append(target)
        return published


@contextlib.contextmanager
def staged_output_dir(path) -> Iterator[StagedOutput]:
    """A ``StagedOutput`` for directory ``path``; unpublished files are discarded at exit."""
    staged = StagedOutput(path)
    try:
        yield staged
    finally:
        shutil.rmtree(staged.directory, ignore_errors=True)


def list_files(path) -> dict[str, int]:
    """``{relative path: size in bytes}`` of every file under directory ``path`` (one listing
    request per page on an object store, not one per file)."""
    if not is_remote(path):
        out = {}
        for root, _, names in os.walk(path):
            for name in names:
                local = os.path.join(root, name)
                out[os.path.relpath(local, path)] = os.path.getsize(local)
        return out
    fs, key = _filesystem(os.fspath(path))
    fs.invalidate_cache(key)  # another process may have written since this one last listed
    key = key.rstrip("/")
    found = fs.find(key, detail=True)
    return {
        name[len(key) + 1 :]: int(info["size"])
        for name, info in found.items()
        if info.get("type") != "directory" and name.startswith(key + "/")
    }


def download_files(path, relative_paths, local_dir: str) -> None:
    """Copies the files ``relative_paths`` of remote directory ``path`` into ``local_dir``,
    concurrently (fsspec batches the requests)."""
    relative_paths = list(relative_paths)
    if not relative_paths:
        return
    fs, key = _filesystem(os.fspath(path))
    key = key.rstrip("/")
    locals_ = [os.path.join(local_dir, r) for r in relative_paths]
    for local in locals_:
        os.makedirs(os.path.dirname(local), exist_ok=True)
    fs.get([f"{key}/{r}" for r in relative_paths], locals_)


class AppendMirror:
    """A local directory of files that only grow (``metrics.jsonl``, TensorBoard event files),
    copied to a remote directory by appending to each object what its file gained since the
    last ``sync``. Writers that need a local file write in ``local_dir``."""

    def __init__(self, remote_dir: str):
        self.remote_dir = os.fspath(remote_dir)
        self.local_dir = tempfile.mkdtemp(prefix="ramen_jax_mirror_")
        self._synced: dict[str, int] = {}

    def sync(self) -> None:
        for relative, size in sorted(list_files(self.local_dir).items()):
            done = self._synced.get(relative, 0)
            if size <= done:
                continue
            with open(os.path.join(self.local_dir, relative), "rb") as file:
                file.seek(done)
                data = file.read(size - done)
            append_bytes(join(self.remote_dir, relative), data)
            self._synced[relative] = done + len(data)

    def close(self) -> None:
        """Last sync, then the local copy goes; if the sync fails the local copy stays (the
        error says where) and the error is raised."""
        try:
            self.sync()
        except Exception as e:
            message = f"{self.remote_dir} not updated; the files are in {self.local_dir}: {e}"
            raise OSError(message) from e
        shutil.rmtree(self.local_dir, ignore_errors=True)


class _OncePerMessage(logging.Filter):
    """Lets the first record of each text through and drops its repeats, for records whose
    text starts with one of ``prefixes``; other records pass."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefixes):
            return True
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


# Warnings logged again at every file operation, with nothing new after the first. gcsfs asks a
# storage control API for a bucket's layout (hierarchical or not) before operations; where it
# cannot answer (an emulator; credentials without the bucket permission it needs) gcsfs warns
# and carries on with the plain API, which works, and asks again next time. Each of those asks
# looks for credentials, and without a metadata server google-auth warns every time too.
REPEATED_WARNINGS = {
    "gcsfs": ("Could not determine bucket type", "Error: Bucket "),
    "google.auth._default": ("Authentication failed using Compute Engine",),
}


def _quiet_repeated_warnings() -> None:
    for name, prefixes in REPEATED_WARNINGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OncePerMessage) for f in logger.filters):
            logger.addFilter(_OncePerMessage(prefixes))


_quiet_repeated_warnings()
