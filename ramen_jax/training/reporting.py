"""What the user sees during training: a progress line, TensorBoard scalars, a metrics log.

Only process 0 writes. The progress line shows step, loss, learning rate, steps/s, tokens/s
and ETA; TensorBoard gets every metric (per-modality losses, gradient norm, lr, compile
count, throughput); ``metrics.jsonl`` in the workdir keeps one JSON line per logged step.

A workdir URL (``gs://...``) cannot be appended to, and tensorboardX's own GCS writer uploads
the whole event file at every flush. So both files are written in a local directory and
appended to their objects (``storage.AppendMirror``: a GCS compose of the new bytes, whose cost
does not grow with the run) at a logged step once ``sync_seconds`` have passed since the last
sync, and at ``close``. A run killed in between loses at most that many seconds of log lines;
its checkpoints are unaffected, and a resumed run appends its lines to the same objects. A sync
that fails is logged and retried at the next one (the lines wait in the local files): logs do
not stop a run that can still train; if the last one fails the local directory is kept and
named in the warning.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np
from absl import logging

from ramen_jax import storage


class NonFiniteLossError(FloatingPointError):
    pass


def check_finite(step: int, metrics: dict) -> None:
    """Stops the run on NaN/inf, naming the step and the offending modality losses."""
    bad = [k for k, v in metrics.items() if not np.all(np.isfinite(v))]
    if bad:
        modalities = [k.split("/", 1)[1] for k in bad if k.startswith("loss/")]
        raise NonFiniteLossError(
            f"non-finite values at step {step} in {bad}"
            + (f" (modalities: {modalities})" if modalities else "")
            + "; the last good checkpoint is kept, nothing after it was saved"
        )


def window_mean(metrics: list[dict]) -> dict:
    """Mean of each metric over a logging window; a per-modality loss (``loss/<m>``) is
    averaged over the steps where it is non-zero, i.e. where the modality was kept."""
    out = {}
    for key in sorted(set().union(*metrics)):
        values = np.array([float(np.asarray(m[key])) for m in metrics if key in m])
        if key.startswith("loss/"):
            values = values[values != 0] if np.any(values != 0) else values
        out[key] = float(values.mean())
    return out


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Reporter:
    def __init__(self, workdir: str, total_steps: int, start_step: int, sync_seconds: float = 0.0):
        self.enabled = jax.process_index() == 0
        self.workdir = workdir
        self.total_steps = total_steps
        self.last_time = time.time()
        self.last_step = start_step
        self.tokens = 0
        self.writer = None
        self.jsonl = None
        self.mirror = None
        self.sync_seconds = float(sync_seconds)
        self.last_sync = time.monotonic()
        if self.enabled:
            from tensorboardX import SummaryWriter

            local = workdir
            if storage.is_remote(workdir):
                self.mirror = storage.AppendMirror(workdir)
                local = self.mirror.local_dir
            self.writer = SummaryWriter(os.path.join(local, "tensorboard"))
            self.jsonl = open(os.path.join(local, "metrics.jsonl"), "a")  # noqa: SIM115

    def count_tokens(self, tokens: int) -> None:
        self.tokens += tokens

    def log(self, step: int, metrics: dict, extra: dict | None = None) -> None:
        """``step`` = number of completed steps; metrics already on host."""
        now = time.time()
        elapsed = max(now - self.last_time, 1e-9)
        steps = max(step - self.last_step, 1)
        rates = {"steps_per_s": steps / elapsed, "tokens_per_s": self.tokens / elapsed}
        self.last_time, self.last_step, self.tokens = now, step, 0
        values = {k: float(np.asarray(v)) for k, v in {**metrics, **rates, **(extra or {})}.items()}
        if not self.enabled:
            return
        eta = (self.total_steps - step) / rates["steps_per_s"]
        line = (
            f"step {step}/{self.total_steps} | loss {values['loss']:.4f} | "
            f"lr {values.get('lr', float('nan')):.2e} | {rates['steps_per_s']:.2f} steps/s"
            f" | {rates['tokens_per_s'] / 1e3:.1f}k tok/s | ETA {_duration(eta)}"
        )
        print(line, file=sys.stdout, flush=True)
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.mirror is not None and time.monotonic() - self.last_sync >= self.sync_seconds:
            self.writer.flush()
            try:
                self.mirror.sync()
            except Exception as e:  # gcsfs raises HTTP and aiohttp errors, not only OSError
                # The lines stay in the local files: the next sync sends them. Logs must not
                # stop a run that can still train and save checkpoints.
                logging.warning("metrics not copied to %s yet (%s); retrying", self.workdir, e)
            self.last_sync = time.monotonic()

    def log_values(self, step: int, values: dict) -> None:
        """Scalars outside the training window (validation): TensorBoard, metrics.jsonl and
        one line on stdout."""
        values = {k: float(v) for k, v in values.items()}
        if not self.enabled:
            return
        shown = " | ".join(f"{k} {v:.4f}" for k, v in values.items() if k.count("/") <= 2)
        print(f"step {step}/{self.total_steps} | {shown}", file=sys.stdout, flush=True)
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()
            if self.mirror is not None:
                try:
                    self.mirror.close()
                except OSError as e:  # the run itself is over: say where its logs are
                    logging.warning("%s", e)
