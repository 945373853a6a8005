"""The shape every console script shares: one wrapper, one flag style.

* :func:`run_main` calls a command's ``main(argv)``: a :class:`~baryir_jax.errors.BaryIRError` becomes
  ``<prog>: <message>`` on stderr and the error's exit code, Ctrl-C becomes 130, never a traceback.
  Every entry point in ``pyproject.toml`` is ``run = console(PROG, _main)``; ``main(argv)`` (the same wrapper,
  returning the code) is what tests call.
* Flag names are spelled with underscores (``--per_device_batch``, ``--max_shapes``); the hyphenated spelling is
  accepted as an alias (``--per-device-batch``). :class:`ArgumentParser` shows each flag once, by its
  canonical name. ``--config.KEY=VALUE`` overrides are left as written (config field names have no hyphens).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

from baryir_jax.errors import EXIT_INTERRUPTED, BaryIRError

ALIAS_NOTE = "Flag names take underscores or hyphens alike (--a_flag = --a-flag)."


def canonical_flags(argv: Sequence[str]) -> list[str]:
    """``--a-b[=v]`` → ``--a_b[=v]`` for every flag before a bare ``--`` (values and ``--config.*`` untouched)."""
    out, done = [], False
    for a in argv:
        if done or not a.startswith("--") or a == "--" or a.startswith(("--config.", "--noconfig.")):
            done = done or a == "--"
            out.append(a)
            continue
        name, eq, value = a.partition("=")
        out.append("--" + name[2:].replace("-", "_") + eq + value)
    return out


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the project's flag style: options are declared with underscores and the
    hyphenated spellings are accepted (:func:`canonical_flags`); ``--help`` lists each option once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog = f"{self.epilog}\n\n{ALIAS_NOTE}" if self.epilog else ALIAS_NOTE

    def add_argument(self, *names, **kwargs):
        names = tuple("--" + n[2:].replace("-", "_") if n.startswith("--") else n for n in names)
        return super().add_argument(*names, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(canonical_flags(args), namespace)


def run_main(prog: str, main: Callable[[list[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """``main(argv)``'s exit code; a BaryIRError → ``<prog>: <message>`` on stderr and its ``exit_code``;
    KeyboardInterrupt → 130. Other exceptions (bugs) propagate with their traceback."""
    try:
        code = main(None if argv is None else list(argv))
    except BaryIRError as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return 0 if code is None else int(code)


def console(prog: str, main: Callable[[list[str] | None], int | None]) -> Callable[[], None]:
    """The console-script entry point of a command: ``sys.exit(run_main(prog, main))``."""

    def run() -> None:
        sys.exit(run_main(prog, main))

    run.__doc__ = f"``{prog}`` (console script): exits with the code of :mod:`baryir_jax.errors`."
    return run


def output_write_problem(out: str, start: str, prefix: str, not_a_folder: str, flag: str = "--output") -> str | None:
    """Why nothing can be written for ``flag out`` (``--output`` unless named), or None. The nearest existing
    folder at or above ``start`` is probed with a real write (a file named ``prefix…``, written, synced and
    removed), so that permissions, a read-only file system and a full disk all show here, also for root;
    ``not_a_folder`` ends the message when that nearest existing path is a file. Creates nothing."""
    probe_dir = os.path.abspath(start)
    while not os.path.exists(probe_dir):
        probe_dir = os.path.dirname(probe_dir)
    if not os.path.isdir(probe_dir):
        return f"{flag} {out}: {probe_dir} {not_a_folder}"
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=prefix) as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return f"{flag} {out}: cannot write in {probe_dir} ({e.strerror or e})"
    return None
