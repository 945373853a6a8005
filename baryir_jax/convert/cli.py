"""``baryir-convert --checkpoint FILE --output DIR``: an official BaryIR checkpoint → a model checkpoint.

Exit status: 0 converted; 1 the file is not a readable PyTorch checkpoint, was refused (a global off the
allow-list), does not hold a BaryNet this converter maps, or the output could not be written (nothing is left
behind); 2 the arguments are unusable (no such file, ``--patch-size`` invalid, ``--output`` a file, not empty,
or not writable), found before any conversion work.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import time

from baryir_jax import cli
from baryir_jax.errors import InputError, UsageError

PROG = "baryir-convert"


def _check_output(out: str) -> str | None:
    """Why `out` cannot receive the converted checkpoint, or None. Creates nothing."""
    if os.path.lexists(out) and not os.path.isdir(out):
        return f"--output {out} exists and is not a directory; choose a new directory"
    if os.path.isdir(out) and os.listdir(out):
        return f"--output {out} is not empty; choose a new directory"
    start = out if os.path.isdir(out) else os.path.dirname(os.path.abspath(out))
    return cli.output_write_problem(out, start, ".baryir-convert-probe-", "is not a directory")


def main(argv=None) -> int:
    """``baryir-convert`` with ``argv``: its exit status (module docstring)."""
    return cli.run_main(PROG, _main, argv)


def _main(argv=None) -> int:
    p = cli.ArgumentParser(
        prog=PROG,
        description="Convert an official BaryIR PyTorch checkpoint (a whole pickled model as saved by the official "
        "trainer, or a state dict) into a baryir_jax model checkpoint directory. The file is read "
        "without PyTorch, and without running any code it contains.",
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--checkpoint", required=True, help="the .pth/.pt file")
    p.add_argument("--output", required=True, help="a new (or empty) directory for the converted checkpoint")
    p.add_argument(
        "--patch_size",
        type=int,
        default=None,
        help="training patch size of the potentials, a multiple of 8 of at least 16 "
        "(default: read off their shapes; 128 or 144)",
    )
    p.add_argument("--no_potentials", action="store_true", help="convert the restorer only")
    args = p.parse_args(argv)

    from baryir_jax.convert.official import ConversionError, check_patch_size, torch_to_flax
    from baryir_jax.convert.torch_pickle import CheckpointFormatError, UnsafeCheckpointError, describe_error

    # Arguments first: nothing is read or converted before they are known to be usable.
    ckpt = args.checkpoint
    if not os.path.exists(ckpt):
        raise UsageError(f"no such file: {ckpt}")
    if not os.path.isfile(ckpt):
        raise UsageError(f"{ckpt} is not a regular file")
    try:
        check_patch_size(args.patch_size)
    except ConversionError as e:
        raise UsageError(str(e)) from None
    problem = _check_output(args.output)
    if problem:
        raise UsageError(problem)

    t0 = time.perf_counter()
    try:
        out = torch_to_flax(ckpt, patch_size=args.patch_size, warn=lambda m: print(m, file=sys.stderr))
    except UnsafeCheckpointError as e:
        raise InputError(f"{ckpt}: {e}") from None
    except CheckpointFormatError as e:
        raise InputError(f"{ckpt} is not a readable PyTorch checkpoint: {e}") from None
    except ConversionError as e:
        raise InputError(f"{ckpt}: {e}") from None
    t_read = time.perf_counter() - t0
    pots = None if args.no_potentials else out["potentials"]

    from baryir_jax.evaluate.checkpoint import clean_async_teardown
    from baryir_jax.models.io import save_model_checkpoint

    created = _first_missing(args.output)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.CRITICAL)  # orbax logs a failed write from each of its threads; we report it once
    try:
        with clean_async_teardown():
            save_model_checkpoint(
                args.output,
                out["barynet"],
                out["barynet_config"],
                pots,
                out["potentials_config"] if pots is not None else None,
                extra={"converted_from": os.path.basename(ckpt)},
            )
    except Exception as e:  # noqa: BLE001 - any failure to write (full disk, read-only, orbax): one line, no residue
        _remove_output(args.output, created)
        full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in str(e)
        why = "the disk is full" if full else describe_error(e)
        raise InputError(f"cannot write the converted checkpoint to {args.output} ({why}); nothing was kept") from None
    finally:
        absl_logger.setLevel(level)
    total = time.perf_counter() - t0
    import jax

    n = sum(x.size for x in jax.tree.leaves(out["barynet"]))
    msg = f"BaryNet {n:,} parameters"
    if pots is not None:
        pc = out["potentials_config"]
        msg += f"; {pc['num_potentials']} potentials (patch {pc['patch_size']})"
    print(f"{msg}; read+map {t_read:.1f}s, total {total:.1f}s -> {os.path.abspath(args.output)}")
    return 0


def _first_missing(path: str) -> str | None:
    """The outermost folder of `path` that does not exist yet (what a failed write must remove), or None."""
    p, missing = os.path.abspath(path), None
    while not os.path.exists(p):
        missing, p = p, os.path.dirname(p)
    return missing


def _remove_output(out: str, created: str | None) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for name in ("params", "model_config.json"):
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


run = cli.console(PROG, _main)  # console-script entry point


if __name__ == "__main__":
    run()
