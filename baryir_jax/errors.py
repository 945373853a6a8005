"""One error base class and one table of exit codes for every command (README: "Exit status").

Every error a user can cause derives from :class:`BaryIRError`; its ``exit_code`` class attribute is the status
the command exits with (:func:`baryir_jax.cli.run_main` prints ``<prog>: <message>`` on stderr, no traceback).
The codes mean the same in every command:

====  ======================================================================================================
code  meaning
====  ======================================================================================================
0     done
1     an input could not be used: a checkpoint, image, data set or folder that is missing, unreadable,
      refused or not prepared as the command needs it, or the command produced nothing (no image restored or
      scored; ``baryir-preflight``: the step does not fit)
2     a bad argument or config: a missing config file, an unknown variant or ``--config.KEY``, a value that
      cannot be parsed or cannot work, settings a resumed run must keep; also an incomplete result
      (``baryir-evaluate``: the average is refused; ``baryir-restore``: stopped by a full disk;
      ``baryir-prepare --verify``: inputs differ from their manifest)
3     the work started and failed: training diverged (NaN/inf; nothing non-finite saved), XLA could not compile
4     the processes of a multi-process job did not meet
130   interrupted (Ctrl-C)
====  ======================================================================================================

``baryir-evaluate`` and ``baryir-restore`` report their own arguments' problems (a tile size, an output folder
that cannot be written, an unknown task) with 1, as they always have; their config files follow the table (2).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_DISTRIBUTED = 4
EXIT_INTERRUPTED = 130

# (code, meaning) for documentation; README's "Exit status" section is this table.
EXIT_CODES = (
    (EXIT_OK, "done"),
    (EXIT_INPUT, "an input could not be used (missing, unreadable, refused, not prepared), or nothing was produced"),
    (EXIT_USAGE, "a bad argument or config value (one line says which and what is allowed), or an incomplete result"),
    (EXIT_FAILED, "the work started and failed: training diverged, XLA could not compile"),
    (EXIT_DISTRIBUTED, "the processes of a multi-process job did not meet"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


class BaryIRError(Exception):
    """An error the user can fix; the message (one line, unless a report follows it) says what, where and how.
    A command exits with ``exit_code`` (:data:`EXIT_CODES`)."""

    exit_code = EXIT_INPUT


class InputError(BaryIRError):
    """An input (checkpoint, image, data set, folder) that cannot be used: exit code 1."""

    exit_code = EXIT_INPUT


class UsageError(BaryIRError):
    """A bad argument or config value: exit code 2."""

    exit_code = EXIT_USAGE


class RunFailed(BaryIRError):
    """The work started and failed (training diverged, a compiler error): exit code 3."""

    exit_code = EXIT_FAILED


class DistributedError(BaryIRError):
    """The processes of a multi-process job did not meet: exit code 4."""

    exit_code = EXIT_DISTRIBUTED
