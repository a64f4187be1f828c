"""Command-line config handling: load an ml_collections config file, apply overrides, validate.

Errors in the command line (an unknown key, a value of the wrong type, a choice that does not
exist) stop the job before any compute, with one line naming the key.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Sequence

import ml_collections
from absl import flags
from etils import epath
from ml_collections import config_flags

from data import atomic


class ConfigError(ValueError):
    """The command line or the config holds a key or value the job cannot use."""


def define_config_flag(name: str = "config") -> flags.FlagHolder:
    """`--config=path.py[:arg]` plus `--config.a.b=value` overrides; the loaded config is locked."""
    return config_flags.DEFINE_config_file(name, lock_config=True)


def _override_keys(argv: Sequence[str], name: str) -> list[str]:
    pattern = re.compile(rf"^--{re.escape(name)}\.([^=]+)(=.*)?$")
    return [m.group(1) for arg in argv if (m := pattern.match(arg))]


def check_override_keys(config: ml_collections.ConfigDict, keys: Sequence[str]) -> None:
    """Raises ConfigError naming the first override key that the config does not have."""
    for key in keys:
        node = config
        for i, part in enumerate(key.split(".")):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                have = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                parent = ".".join(key.split(".")[:i]) or "<root>"
                raise ConfigError(
                    f"unknown config key '{key}': '{parent}' has no field '{part}'"
                    + (f" (fields: {', '.join(have)})" if have else "")
                )
            node = node[part]


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` the way `--config=` does (get_config(arg) or get_config())."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location("_config_under_check", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"config file {path} is not a Python module")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def parse_command_line(argv: Sequence[str], name: str = "config") -> list[str]:
    """Parses absl flags; an unknown override key or a badly typed value becomes a ConfigError.

    Every override key is first checked against the config file's fields, giving one clear line
    instead of a traceback from deep in the flag library.
    """
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)
    if spec is not None:
        check_override_keys(load_config_file(spec), _override_keys(argv, name))
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as err:
        raise ConfigError(f"bad command line: {err}") from err


def as_json(config: ml_collections.ConfigDict) -> dict:
    """The config as `save_resolved` writes it and `check_workdir_config` compares it."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def changed_keys(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON trees (added and removed keys included)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


# Keys that change how a job runs but not what it computes: a work dir may resume under other values.
RESULT_NEUTRAL_KEYS = frozenset({"concurrent_runs"})


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str, allow_change: bool) -> None:
    """Refuses to continue a work dir's job under a different config: its finished stages would be
    skipped as they are, so the report would silently mix the two configs."""
    path = os.path.join(workdir, "config.json")
    if allow_change or not epath.Path(path).exists():
        return
    changed = [
        k
        for k in changed_keys(json.loads(epath.Path(path).read_text()), as_json(config))
        if k not in RESULT_NEUTRAL_KEYS
    ]
    if changed:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ConfigError(
            f"work dir {workdir} holds a job run with a different config ({shown}); its finished stages "
            "would be reused unchanged. Use a new --workdir, or pass --allow_config_change to keep them"
        )


def save_resolved(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the resolved config as JSON into the work dir (atomic); returns the path."""
    path = os.path.join(workdir, "config.json")
    atomic.write_text(path, json.dumps(as_json(config), indent=2, sort_keys=True) + "\n")
    return path
