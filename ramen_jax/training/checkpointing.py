"""Orbax checkpoints of a training run: everything needed to resume exactly, nothing that can
poison a run.

Each checkpoint (``WORKDIR/checkpoints/<step>``) holds two items:

- ``state``: the ``TrainState`` (step, params, BatchNorm statistics, optimiser state) as a
  plain nested dict, restored straight into the current mesh's shardings, so a run resumes on a
  different device count, process count or on CPU;
- ``meta`` (JSON): the data pipeline's position (``next_step``: the pipeline is a pure
  function of the step index, so this *is* the Grain iterator state of the step dataset), the
  RNG seed (per-step keys are ``fold_in(seed, step)``), the model config, the run config, the
  run's identity (``run_identity``) and a digest of every saved array (``array_digests``).

Saves are asynchronous (``async_save``), every ``every_steps`` and on demand (SIGTERM, end);
the last ``keep`` are kept, and resuming reads only these. With ``keep_best = k`` > 0, each
validated state is also saved (synchronously, the same two items) to ``WORKDIR/best/<step>``,
where Orbax keeps the ``k`` with the lowest validation loss (``BestCheckpoints``); the two sets
are independent, so the newest checkpoint is always there to resume from. What can go wrong,
and what the user sees instead of a traceback:

- a state with a NaN/inf value is never saved (``NonFiniteState``, naming the step and arrays);
- a failed write (a full disk) stops the run at the first step that sees it: the step after
  the write finished in a one-process job, the next save or the end in a multi-process one,
  where every process must agree (``SaveFailed``);
- on resume, checkpoints are tried newest first; one whose files cannot be read, or whose arrays
  are non-finite or differ from their digests, is reported in one warning line and moved aside
  to ``<step>.damaged`` once an intact one is found; with none intact the run stops
  (``NoIntactCheckpoint``) rather than silently starting afresh;
- a checkpoint of another run (``run_identity.RunMismatch``) is refused before any array is read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

from ramen_jax.model.weights import CHECKPOINTS_DIR, META_ITEM, STATE_ITEM
from ramen_jax.training import array_digests, run_identity
from ramen_jax.training.failures import RunError
from ramen_jax.training.optimizer import TorchAdamWState
from ramen_jax.training.process_agreement import all_processes
from ramen_jax.training.step import TrainState

SETTINGS = ("every_steps", "keep", "async_save", "keep_best")
BEST_DIR = "best"
BEST_METRIC = "val_loss"


class CheckpointSettingsError(RunError):
    pass


class NonFiniteState(RunError):
    pass


class SaveFailed(RunError):
    pass


class NoIntactCheckpoint(RunError):
    pass


def validate_settings(checkpoint_config) -> dict:
    """The ``checkpoint`` settings as keyword arguments, or ``CheckpointSettingsError``."""
    values = dict(checkpoint_config)
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise CheckpointSettingsError(f"unknown checkpoint settings {unknown}; known: {SETTINGS}")

    def whole(name):
        value = values.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            why = " (0 would delete every checkpoint, the final one too)" if value == 0 else ""
            raise CheckpointSettingsError(
                f"checkpoint.{name} must be a whole number >= 1, got {value!r}{why}"
            )

    whole("every_steps")
    whole("keep")
    best = values.get("keep_best", 0)
    if isinstance(best, bool) or not isinstance(best, int) or best < 0:
        raise CheckpointSettingsError(
            f"checkpoint.keep_best must be a whole number >= 0 (0: off), got {best!r}"
        )
    if not isinstance(values.get("async_save", True), bool):
        raise CheckpointSettingsError(
            f"checkpoint.async_save must be true or false, got {values['async_save']!r}"
        )
    return values


def state_to_tree(state: TrainState) -> dict:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state._asdict(),
    }


def tree_to_state(tree: dict) -> TrainState:
    return TrainState(
        tree["step"], tree["params"], tree["batch_stats"], TorchAdamWState(**tree["opt_state"])
    )


def abstract_tree(state_abstract: TrainState, shardings: TrainState) -> dict:
    """ShapeDtypeStructs carrying the target shardings, for restoring."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        state_to_tree(state_abstract),
        state_to_tree(shardings),
    )


# What the operating system said, in TensorStore's and Python's wording ("[OS error 28: No
# space left on device]", "[Errno 28] No space left on device"): the part a user acts on.
_OS_ERROR = re.compile(r"OS error \d+: [^\]\n]+|\[Errno \d+\] [^\n'\"]+")


def finite_tree(state_check, step: int, state: TrainState, where: str) -> tuple[dict, dict]:
    """The tree to save and its digests; ``NonFiniteState`` (naming the arrays) if any value
    is NaN/inf, so a diverged state is never written ``where``."""
    tree = state_to_tree(state)
    non_finite, digests = state_check.check(tree)
    if non_finite:
        raise NonFiniteState(
            f"the state after step {step} has non-finite values in "
            f"{array_digests.describe(non_finite)}; it was not saved {where}"
        )
    return tree, digests


def one_line(error: BaseException, limit: int = 320) -> str:
    """An exception as one short line (Orbax and TensorStore messages run to pages), keeping
    the operating system's reason when the shortening would cut it out."""
    full = str(error)
    lines = [line.strip() for line in full.splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if len(text) > limit:
        text = text[: limit // 3] + " ... " + text[-(2 * limit) // 3 :]
    cause = _OS_ERROR.search(full)
    if cause and cause.group(0) not in text:
        text += f" ({cause.group(0).strip()})"
    return text


class _OrbaxErrorsInOneLine(logging.Filter):
    """Orbax logs a failed background write with its traceback, once per thread it passes
    through; the run reports the failure itself (``SaveFailed``), so these records keep only
    the exception's first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
            error = record.exc_info[1]
            record.exc_info, record.exc_text = None, None
            if error is not None:
                text = one_line(error)
                record.msg = f"{record.msg}: {text.replace('%', '%%') if record.args else text}"
        return True


def _closed_event_loop_reports_dropped(previous):
    """After a failed write TensorStore still completes the other writes' futures, on the event
    loop Orbax closed with the failure; Python reports each as an "Exception ignored" traceback
    on stderr. The failure is reported once (``SaveFailed``), so these reports are dropped."""

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_event_loop_reports = True
    return hook


def quiet_orbax_noise() -> None:
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxErrorsInOneLine) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxErrorsInOneLine())
    if not getattr(sys.unraisablehook, "drops_closed_event_loop_reports", False):
        sys.unraisablehook = _closed_event_loop_reports_dropped(sys.unraisablehook)


def warn(text: str) -> None:
    """One ``warning:`` line on stderr, from process 0."""
    if jax.process_index() == 0:
        print(f"warning: {text}", file=sys.stderr, flush=True)


class Checkpointer:
    def __init__(self, workdir: str, **settings):
        settings = validate_settings(settings)
        quiet_orbax_noise()
        self.directory = os.path.join(
            os.path.abspath(workdir) if "://" not in workdir else workdir, CHECKPOINTS_DIR
        )
        self.every_steps = settings["every_steps"]
        self.async_save = settings.get("async_save", True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=settings["keep"], enable_async_checkpointing=self.async_save, create=True
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE_ITEM, META_ITEM)
        )
        self.state_check = array_digests.StateCheck()
        self.newest_complete: int | None = self.manager.latest_step()
        self._in_flight: int | None = None  # step of the asynchronous save being written
        self._failed = False

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is a save step; called every step, it is also where a failed
        asynchronous save of a one-process job is noticed (``poll``)."""
        self.poll()
        return step % self.every_steps == 0

    # -- saving --------------------------------------------------------------------------

    def poll(self) -> None:
        """Raises ``SaveFailed`` if the save being written has finished and failed. Without
        a collective per step the processes of a multi-process job would notice at different
        steps, so they settle at the next save instead."""
        if self._in_flight is not None and jax.process_count() == 1:
            if not self.manager.is_saving_in_progress():
                self._settle()

    def _settle(self) -> None:
        """Waits for the save being written; a failure on any process fails every process."""
        if self._in_flight is None:
            return
        step, self._in_flight = self._in_flight, None
        error = None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 (any failure of the write is reported the same way)
            error = e
        if not all_processes(error is None):
            self._fail(step, error)
        self.newest_complete = step

    def _newest(self) -> str:
        if self.newest_complete is None:
            return "no checkpoint was saved before"
        return f"the newest complete checkpoint is step {self.newest_complete}"

    def _fail(self, step: int, error: BaseException | None):
        self._failed = True
        reason = one_line(error) if error is not None else "it failed on another process"
        raise SaveFailed(
            f"saving the checkpoint of step {step} to {self.directory} failed: {reason} "
            f"({self._newest()})"
        )

    def prepare(self, abstract_state_tree: dict) -> None:
        """Compiles the finite/digest program ahead of the first save (``precompile``)."""
        self.state_check.prepare(abstract_state_tree)

    def save(self, step: int, state: TrainState, meta: dict, *, wait: bool = False) -> None:
        self._settle()
        tree, digests = finite_tree(self.state_check, step, state, f"({self._newest()})")
        error = None
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.StandardSave(tree),
                        META_ITEM: ocp.args.JsonSave({**meta, "digests": digests}),
                    }
                ),
                force=True,
            )
        except Exception as e:  # noqa: BLE001
            error = e
        if not all_processes(error is None):
            self._fail(step, error)
        self._in_flight = step
        if wait or not self.async_save:
            self._settle()

    def close(self) -> None:
        try:
            if not self._failed:
                self._settle()
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001
                if not self._failed:  # a failure already reported is not reported twice
                    raise

    # -- restoring -----------------------------------------------------------------------

    def _agreed_read(self, step: int, **items) -> tuple[dict | None, str | None]:
        """Restores ``items`` of ``step``; (restored, None) or (None, why it failed)."""
        restored, problem = None, None
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 (any unreadable file: the step is damaged)
            problem = one_line(e, 200)
        if not all_processes(problem is None):
            return None, problem or "unreadable on another process"
        return restored, None

    def _verify(self, tree: dict, meta: dict) -> str | None:
        non_finite, digests = self.state_check.check(tree)
        if non_finite:
            return f"non-finite values in {array_digests.describe(non_finite)}"
        saved = meta.get("digests")
        wrong = array_digests.mismatches(saved, digests) if saved is not None else []
        if wrong:
            return f"{array_digests.describe(wrong)} differ from the digests taken when saved"
        return None

    def restore_newest_intact(
        self, target: dict, identity: dict, report: Callable[[str], None] = warn
    ) -> tuple[TrainState, dict] | None:
        """The newest intact checkpoint, or None when there is none at all.

        Tries the steps newest first. The first readable meta must be of this run
        (``run_identity.check``), before any array is read. A step that cannot be read, or
        whose arrays are non-finite or differ from their digests, is skipped; once an intact
        step is found, each skipped one is moved aside and reported in one line (``report``).
        """
        self.manager.reload()
        steps = sorted(self.manager.all_steps(), reverse=True)
        damaged: list[tuple[int, str]] = []
        identity_checked = False
        for step in steps:
            restored, problem = self._agreed_read(step, **{META_ITEM: ocp.args.JsonRestore()})
            if problem is None:
                meta = dict(restored[META_ITEM])
                if not identity_checked:
                    run_identity.check(meta, identity, f"{self.directory}/{step}")
                    identity_checked = True
                restored, problem = self._agreed_read(
                    step, **{STATE_ITEM: ocp.args.StandardRestore(target)}
                )
            if problem is None:
                problem = self._verify(restored[STATE_ITEM], meta)
            if problem is None:
                self._set_aside(damaged, step, report)
                self.newest_complete = step
                return tree_to_state(restored[STATE_ITEM]), meta
            damaged.append((step, problem))
        if damaged:
            reasons = "; ".join(f"step {s}: {why}" for s, why in damaged[:3])
            raise NoIntactCheckpoint(
                f"no intact checkpoint in {self.directory} ({reasons}); move the steps away "
                "to start the run afresh, or use another --workdir"
            )
        return None

    def _set_aside(self, damaged: list, restored: int, report: Callable[[str], None]) -> None:
        """Renames damaged steps to ``<step>.damaged``: kept for inspection, ignored by Orbax
        and out of the way of the resumed run, which saves those steps again."""
        for step, problem in damaged:
            source = epath.Path(self.directory) / str(step)
            target = source.parent / f"{step}.damaged"
            suffix = 1
            while target.exists():
                suffix += 1
                target = source.parent / f"{step}.damaged{suffix}"
            if jax.process_index() == 0:
                source.rename(target)
            report(
                f"checkpoint step {step} in {self.directory} is damaged ({problem}); moved to "
                f"{target.name}, resuming from step {restored}"
            )
        if damaged:
            all_processes(True)  # a barrier: every process lists the steps after the move
            self.manager.reload()


class BestCheckpoints:
    """``WORKDIR/best``: the ``keep`` validated states with the lowest validation loss."""

    def __init__(self, workdir: str, keep: int):
        quiet_orbax_noise()
        self.directory = os.path.join(
            os.path.abspath(workdir) if "://" not in workdir else workdir, BEST_DIR
        )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            best_fn=lambda metrics: metrics[BEST_METRIC],
            best_mode="min",
            keep_checkpoints_without_metrics=False,
            enable_async_checkpointing=False,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE_ITEM, META_ITEM)
        )
        self.state_check = array_digests.StateCheck()

    def save(self, step: int, state: TrainState, meta: dict, val_loss: float) -> None:
        if step in self.manager.all_steps():
            # a run stopped after this validation, before its next regular checkpoint, and
            # resumed from an earlier one: the replayed steps reproduce the saved state exactly
            return
        tree, digests = finite_tree(self.state_check, step, state, f"to {self.directory}")
        error = None
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.StandardSave(tree),
                        META_ITEM: ocp.args.JsonSave(
                            {**meta, "digests": digests, BEST_METRIC: val_loss}
                        ),
                    }
                ),
                metrics={BEST_METRIC: float(val_loss)},
                force=True,
            )
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            error = e
        if not all_processes(error is None):
            reason = one_line(error) if error is not None else "it failed on another process"
            raise SaveFailed(f"saving the best checkpoint of step {step} failed: {reason}")

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def close(self) -> None:
        self.manager.close()


def run_meta(next_step: int, seed: int, model_config, config, identity: dict | None = None) -> dict:
    return {
        "next_step": int(next_step),
        "seed": int(seed),
        "model_config": dataclasses.asdict(model_config),
        "config": json.loads(config.to_json_best_effort()),
        **({"identity": identity} if identity is not None else {}),
    }
