"""What can go wrong, by whose fault, and the exit code each ends the command with.

Contract
--------
* :class:`UserError` and its kinds are about the user's input or environment (a file, a folder, a config key, an
  option) or a training run that cannot go on; the CLI prints their message as one ``droneseg: error: …`` line.
  Messages name the file or key and the problem.
* Anything else raised inside a command is a bug of droneseg or a library: the CLI says so on one line, exits with
  :data:`EXIT_INTERNAL` and prints the traceback with ``--debug`` or ``DRONESEG_DEBUG=1``. An ``OSError`` that names a
  file (missing, unreadable, disk full) is the user's.

Exit codes: 0 done; 1 ``check-data`` found problems or ``predict`` skipped photos; 2 bad input or usage
(:data:`EXIT_INPUT`); 3 internal error; 4 training diverged (:data:`EXIT_DIVERGED`); 99 OAR requeue;
130 interrupted with Ctrl-C, the run saved and resumable (:data:`EXIT_INTERRUPTED`).
"""

from __future__ import annotations

EXIT_INPUT = 2
EXIT_INTERNAL = 3
EXIT_DIVERGED = 4
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """The user's input or environment, not a bug: one line naming the file or key and the problem."""

    exit_code = EXIT_INPUT


class DataError(UserError, ValueError):
    """Bad input data, config or option; the message names the file (or key) and the problem on one line."""


class Diverged(UserError):
    """The training loss became NaN or infinite; the message names the epoch and step, ``last.ckpt`` is the last
    good state (saved before the step that diverged)."""

    exit_code = EXIT_DIVERGED


class Interrupted(UserError):
    """Ctrl-C (SIGINT) stopped training between two steps, with ``last.ckpt`` saved there: ``--resume`` continues."""

    exit_code = EXIT_INTERRUPTED
