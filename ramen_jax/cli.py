"""How every command line of the project reports a user's mistake: one ``error: ...`` line.

EO tools run in batch jobs over thousands of scenes, where a traceback is noise: a mistake the
user can fix (a bad flag value, a missing or malformed file, an impossible request) ends with
exit status 1 (2 for a flag argparse refuses) and exactly one line on stderr naming the value
and what to give instead. ``ramen_jax.train`` reports its ``RunError``s the same way
(``ramen_jax.training.failures``). A bug still ends with its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Iterable

USAGE_EXIT_CODE = 2


def one_line(error: BaseException | str) -> str:
    return " ".join(str(error).split())


def report(error: BaseException | str, exit_code: int = 1) -> int:
    """Prints ``error: <message>`` as one line on stderr; returns ``exit_code``."""
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    return exit_code


def close_matches(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean a, b?)`` for the choices spelled like ``word``, else ``""``."""
    found = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(found)}?)" if found else ""


class OneLineParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose usage errors are one line (argparse prints the usage first)."""

    def error(self, message: str):
        report(f"{message} (see {self.prog} --help)")
        sys.exit(USAGE_EXIT_CODE)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not >= 0")
    return value


def parse_absl_flags(argv: list[str], config_flag=None) -> list[str]:
    """``flags.FLAGS(argv)`` for an ``absl.app`` command (``app.run(main, flags_parser=...)``),
    with a bad flag, a config override naming no field or a config file that does not load
    reported as one line (exit status 2). ``config_flag``: the command's
    ``config_flags.DEFINE_config_file`` holder, loaded here (ml_collections loads lazily)."""
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
        if config_flag is not None and config_flag.value is not None:
            config_flag.value.keys  # noqa: B018
    except flags.Error as e:  # absl's own: unknown or missing flag, bad value
        sys.exit(report(e, USAGE_EXIT_CODE))
    except Exception as e:  # noqa: BLE001 (ml_collections raises whatever the config raised)
        sys.exit(report(config_flag_error(e, argv), USAGE_EXIT_CODE))
    return rest


def config_flag_error(error: BaseException, argv: list[str]) -> str:
    """One line for an exception raised while loading ``--config`` or applying an override."""
    chain = [error]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for e in chain:  # a field the config lacks: ml_collections' KeyError / AttributeError
        text = str(e)
        name = re.search(r"(\w+)", text) if isinstance(e, (KeyError, AttributeError)) else None
        given = [a for a in argv if name and a.startswith("--config.") and f".{name[1]}" in a]
        if given:
            hint = re.search(r'Did you mean \W*"([^"\\]+)', text)
            return f"{given[0]}: the config has no field {name[1]!r}" + (
                f" (did you mean {hint.group(1)!r}?)" if hint else ""
            )
    path = _config_path(argv)
    if not os.path.isfile(path.split(":")[0]):
        return f"--config {path}: no such config file"
    return f"--config {path}: the file does not load ({type(chain[-1]).__name__}: {chain[-1]})"


def _config_path(argv) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return "?"
