"""Test-wide setup: 8 forced CPU devices so that sharding is exercised for real.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives at the top of conftest.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
    """One persistent compilation cache for the training tests' subprocesses: identical programs (the tiny demo
    on one CPU device, or on two processes) compile once per session, whichever module runs them first."""
    return str(tmp_path_factory.mktemp("jax_cache"))
