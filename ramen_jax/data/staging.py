"""Local copies of prepared datasets kept in a bucket: ArrayRecord's reader opens local files only.

``stage_dataset("gs://BUCKET/data/mmearth", cache_dir)`` copies the dataset directory (a
finished ``data_prep`` output) to ``cache_dir/gs/BUCKET/data/mmearth`` and returns that path.
It runs when a ``records`` source is built, in the main process, before any Grain worker
starts (workers receive the local path). A file lock on the copy makes the processes of one
host take turns: the first copies, the others find the copy complete. A copy is complete when
it holds every remote file with the remote size and nothing else; the check runs at every
start (one listing of the bucket directory), so a restarted run reuses the copy and only a
missing, truncated or changed file is fetched again.

Every host needs the whole dataset (each reads its slice of every batch, drawn from all
samples), so the copy must fit on each host's disk. Larger datasets: mount the bucket
(gcsfuse) and give the local mount path instead of the URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from absl import logging

from ramen_jax import storage

DEFAULT_CACHE_DIR = "~/.cache/ramen_jax/datasets"
# Written last by data_prep: a directory without it is not a finished dataset.
FINISHED_MARKER = "features.json"


class StagingError(ValueError):
    pass


def cache_path(url: str, cache_dir: str | None) -> str:
    """``gs://BUCKET/a/b`` -> ``<cache_dir>/gs/BUCKET/a/b``."""
    scheme, _, rest = os.fspath(url).partition("://")
    root = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
    return os.path.join(root, scheme, *[part for part in rest.split("/") if part])


@contextlib.contextmanager
def _host_lock(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _stale(remote: dict[str, int], local: dict[str, int]) -> list[str]:
    return sorted(name for name, size in remote.items() if local.get(name) != size)


def stage_dataset(url: str, cache_dir: str | None = None) -> str:
    """The local copy of the dataset directory ``url``, made or completed as needed."""
    remote = storage.list_files(url)
    if FINISHED_MARKER not in remote:
        raise StagingError(
            f"{url} is not a finished data_prep dataset (no {FINISHED_MARKER}): convert the "
            "dataset with python -m data_prep.<name> and copy the whole output folder there"
        )
    local_dir = cache_path(url, cache_dir)
    with _host_lock(local_dir):
        local = storage.list_files(local_dir) if os.path.isdir(local_dir) else {}
        for extra in sorted(set(local) - set(remote)):  # e.g. shards of an older conversion
            os.unlink(os.path.join(local_dir, extra))
        missing = _stale(remote, local)
        if not missing:
            logging.info("%s: reusing the local copy in %s", url, local_dir)
            return local_dir
        total = sum(remote[name] for name in missing)
        logging.info(
            "%s: copying %d of %d files (%.1f MB) to %s",
            url,
            len(missing),
            len(remote),
            total / 1e6,
            local_dir,
        )
        # An interrupted copy leaves files short of their size: the next start fetches them.
        storage.download_files(url, missing, local_dir)
        wrong = _stale(remote, storage.list_files(local_dir))
        if wrong:
            raise StagingError(f"{url}: the local copy in {local_dir} differs in size: {wrong}")
    return local_dir
