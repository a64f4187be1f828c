"""Checkpoints with orbax: the train state plus the input iterator's state, in one atomic step dir.

A run's checkpoints live in `workdir/checkpoints/<step>`; orbax writes each to a temporary directory
and renames it when complete, so a killed job leaves either the previous checkpoint or the new one.
`load_variables` is how other stages (selection, fine-tuning init, evaluation) read a trained run.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from data import paths

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(paths.resolve(workdir), CHECKPOINT_DIR)


class Checkpointer:
    """Periodic/forced saves (keep the last `keep`), and restore of state + iterator state."""

    def __init__(self, workdir: str, *, keep: int = 3, every_steps: int = 0):
        self.every_steps = int(every_steps)
        self._manager = ocp.CheckpointManager(
            checkpoint_dir(workdir),
            options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True),
            item_names=("state", "iterator"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: Any, iterator_state: Any) -> None:
        """Saves unless this step is already saved; the write finishes in the background."""
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), iterator=ocp.args.JsonSave(iterator_state)),
            force=True,
        )

    def restore(self, step: int, target: Any) -> tuple[Any, Any]:
        """(state laid out like `target`, iterator state) from checkpoint `step`."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), iterator=ocp.args.JsonRestore()),
        )
        return restored["state"], restored["iterator"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _latest_step(directory: str) -> int:
    """The newest complete checkpoint's step under `directory`; FileNotFoundError when there is none."""
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {directory}")
    return step


def load_raw_state(workdir: str, step: int | None = None) -> dict:
    """The saved train state (latest step unless `step`) as nested dicts of host numpy arrays,
    whatever device layout saved it (an FSDP run on a pod reads back on one CPU)."""
    step = _latest_step(checkpoint_dir(workdir)) if step is None else step
    handlers = {"state": ocp.StandardCheckpointHandler(), "iterator": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(checkpoint_dir(workdir), item_handlers=handlers) as manager:
        metadata = manager.item_metadata(step)["state"]
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata)  # lazily zeroed host buffers
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return restored["state"]


def load_variables(workdir: str, use_ema: bool = True) -> dict:
    """The latest checkpoint's model variables for inference: dict(params=..., batch_stats=...).

    EMA weights when `use_ema` and the run kept an EMA, else the raw weights. A job reads the same
    run several times (weights, then one fine-tune per seed), so recent reads are kept in memory;
    the arrays are read-only for that reason.
    """
    directory = checkpoint_dir(workdir)
    step = _latest_step(directory)
    return _load_variables(directory, step, *_identity(os.path.join(directory, str(step))), bool(use_ema))


def _identity(step_dir: str) -> tuple[int, int]:
    """What tells a re-created run's checkpoint from the old one at the same step: (inode, mtime in ns)
    on local disk; on a bucket the step folder's modification time as its listing reports it."""
    if not paths.is_url(step_dir):
        stat = os.stat(step_dir)
        return stat.st_ino, stat.st_mtime_ns
    try:
        return 0, int(epath.Path(step_dir).stat().mtime)
    except (OSError, KeyError, ValueError):  # an object store may keep no time for a folder
        return 0, 0


@functools.lru_cache(maxsize=4)
def _load_variables(directory: str, step: int, inode: int, mtime_ns: int, use_ema: bool) -> dict:
    del inode, mtime_ns  # cache key only
    state = load_raw_state(os.path.dirname(directory), step)

    def to_np(tree):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out[key] = to_np(value)
            else:
                out[key] = np.array(value)
                out[key].flags.writeable = False
        return out

    if use_ema and state.get("ema_params"):
        return {"params": to_np(state["ema_params"]), "batch_stats": to_np(state.get("ema_batch_stats") or {})}
    return {"params": to_np(state["params"]), "batch_stats": to_np(state.get("batch_stats") or {})}
