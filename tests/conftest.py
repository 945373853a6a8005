"""Test-wide setup: 8 forced CPU devices so that sharding is exercised for real.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives at the top of conftest.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's cheap compile (backend optimisation level 0, no expensive LLVM passes) for every test and every
# subprocess a test starts: the tiny train step then compiles in about half the time (81 s -> 41 s measured,
# 2026-11-30) and runs a few steps as it must. The numbers a test compares come from programs compiled alike, and
# the parity tests' bounds hold under it (their comments' "measured" values were taken with XLA's defaults). The
# tests about what XLA's defaults give, or that run thousands of steps, turn it off in their process (fixture
# ``xla_defaults``). Set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to run the whole suite with XLA's defaults.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# One persistent compilation cache for the whole run: this process, every pytest-xdist worker and every
# subprocess a test starts (they inherit the environment). Identical programs then compile once per run: the
# tiny demo step is compiled by dozens of training-CLI tests. The cache is keyed by the program, the jax/XLA
# versions and the flags, so a hit is the same executable. Removed at the end of the run when made here.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="baryir-jax-test-cache-")
    os.environ["BARYIR_TEST_CACHE_OWNER"] = str(os.getpid())

from absl import flags  # noqa: E402

# grain's worker processes read absl flags; pytest never parses them.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def embedded_data_dir(tmp_path_factory):
    """The embedded data set, prepared once for the whole session (the training tests' subprocesses read it)."""
    from baryir_jax.data.prepare import prepare

    d = tmp_path_factory.mktemp("embedded_data")
    prepare("embedded", str(d), progress=False, out=lambda s: None)
    return str(d)


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
    """The run's persistent compilation cache (above), for the training tests that set up their subprocesses'
    environment themselves: identical programs (the tiny demo on one CPU device, or on two processes) compile once
    per run, whichever test module and whichever pytest-xdist worker runs them first. When the cache is yours
    (JAX_COMPILATION_CACHE_DIR set before the run), these subprocesses get a temporary one per worker instead, so
    that the suite's many small entries never land in it."""
    if os.environ.get("BARYIR_TEST_CACHE_OWNER"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture
def xla_defaults():
    """XLA's default (fully optimising) compile for one test in this process (not in the subprocesses it starts),
    whatever the suite-wide setting above. The setting is not part of JAX's in-memory compilation cache key, so
    that cache is cleared on the way in and out (no cheaply compiled program is reused inside, and none compiled
    inside leaks out)."""
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
    jax.clear_caches()


def pytest_unconfigure(config):
    """Remove the run's compilation cache (only in the process that made it, after its workers are done)."""
    if os.environ.get("BARYIR_TEST_CACHE_OWNER") == str(os.getpid()):
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
