"""User errors versus bugs: what the command line prints as one line and what keeps its traceback.

A user error is something the person running the command can fix (a bad value, a missing file or
folder, an unreachable hub, options that do not go together, a checkpoint or adapter that does not
fit). The CLIs print it as `error: <what is wrong>. <how to fix it>` on stderr and exit with status 2.
Everything else is a bug in this project or a library and keeps its full traceback.

Two kinds of exception count as user errors:

- `UserError`, raised by the checks that exist only to catch user mistakes (e.g. preflight.py),
  and the few exception types of this package that mean the same (`_PROJECT_USER_ERRORS`);
- the exceptions listed in `_DELIBERATE`, when this package raised them itself with a `raise`
  statement. Its checks of paths, config values and adapter files raise ValueError and
  FileNotFoundError with messages that name the key and the fix (and library users catch those
  standard types), so the type alone is not enough: a ValueError from inside torch, or from a
  failed `zip(strict=True)` in our own code, is a bug and must keep its traceback.
"""

from __future__ import annotations

import linecache
import os
import sys
from types import TracebackType

EXIT_USER_ERROR = 2
PACKAGE = __name__.split(".")[0]  # the whole package, not only cli/


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""


# Exception types that this package raises on purpose about the user's input or data:
#   ValueError          a config value, option combination, data file or adapter file that does not fit
#   FileNotFoundError   a path the user gave (model folder, data.data_dir, ckpt_path, adapter folder)
#   FloatingPointError  training diverged (tasks/base.py names the options that prevent it)
_DELIBERATE: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FloatingPointError)


# This package's own exception types that only ever describe a user's input ("module:Class"); looked
# up among the imported modules, since an error of a type whose module was never imported cannot occur.
_PROJECT_USER_ERRORS = (
    "loldu_lightning.checkpoints:CheckpointError",  # a checkpoint that cannot resume this run
    "loldu_lightning.models.packages:SplitZipError",  # a packaged model's parts are missing or damaged
)


def _project_user_errors() -> tuple[type[BaseException], ...]:
    found = []
    for entry in _PROJECT_USER_ERRORS:
        module_name, _, class_name = entry.partition(":")
        error_type = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(error_type, type):
            found.append(error_type)
    return tuple(found)


def _library_user_errors() -> tuple[type[BaseException], ...]:
    """Library exceptions that always mean a configuration mistake, whoever raised them."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import MissingMandatoryValue

    # composing the config tree: an unknown group option, a malformed override, a `???` left unset
    return (ConfigCompositionException, MissingConfigException, OverrideParseException, MissingMandatoryValue)


def _innermost(tb: TracebackType | None) -> TracebackType | None:
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def raised_on_purpose(error: BaseException) -> bool:
    """Whether a `raise` statement in this package raised `error` (not a failing call inside it)."""
    tb = _innermost(error.__traceback__)
    if tb is None:
        return False
    frame = tb.tb_frame
    module = frame.f_globals.get("__name__", "")
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return False
    line = linecache.getline(frame.f_code.co_filename, tb.tb_lineno, frame.f_globals).strip()
    return line.startswith("raise ") or line == "raise"


def user_error_message(error: BaseException) -> str | None:
    """The one-line message for a user error; None for anything else (a bug: keep the traceback)."""
    if isinstance(error, (UserError, *_project_user_errors())):
        message = str(error)
    elif isinstance(error, _library_user_errors()):
        # Hydra appends where it searched, which says nothing about the fix
        message = str(error).split("\nConfig search path:")[0]
    elif isinstance(error, _DELIBERATE) and raised_on_purpose(error):
        message = str(error)
    else:
        return None
    # one line: Hydra's composition messages and a few of ours put the choices on following lines
    return " ".join(part.strip() for part in message.splitlines() if part.strip()) or type(error).__name__


def full_error_requested() -> bool:
    """HYDRA_FULL_ERROR=1 asks for every traceback, user errors included (Hydra's own convention)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def print_user_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def exit_on_user_error(error: BaseException) -> None:
    """Print `error` as one line and exit 2 when it is a user error; return (to re-raise) otherwise."""
    message = user_error_message(error)
    if message is None or full_error_requested():
        return
    print_user_error(message)
    raise SystemExit(EXIT_USER_ERROR) from None
