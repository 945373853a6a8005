"""Model structure: parameter counts at full size (eval_shape only), shapes, errors, layers against PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from baryir_jax.models import BaryNet, Potentials, pixel_shuffle, pixel_unshuffle
from baryir_jax.models.layers import LayerNorm

TINY = dict(dim=16, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2))


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def test_full_size_parameter_counts_without_compiling():
    shapes = jax.eval_shape(lambda: BaryNet().init(jax.random.key(0), jnp.zeros((1, 128, 128, 3))))
    assert _count(shapes["params"]) == 53_549_774  # official count without its unused convs
    assert _count(shapes["params"]["barylatent_7"]) > 0 and "barylatent_8" not in shapes["params"]
    pots = jax.eval_shape(lambda: Potentials(3).init(jax.random.key(0), jnp.zeros((1, 16, 16, 384))))
    assert sorted(pots["params"]) == ["potential_0", "potential_1", "potential_2"]
    assert _count(pots["params"]["potential_0"]) == 10_126_977
    p144 = jax.eval_shape(lambda: Potentials(1, patch_size=144).init(jax.random.key(0), jnp.zeros((1, 18, 18, 384))))
    assert _count(p144["params"]) == 23_785_953


def test_full_size_output_shapes():
    m = BaryNet()
    params = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    out = jax.eval_shape(lambda p: m.apply(p, jnp.zeros((2, 64, 96, 3))), params)
    assert out.restored.shape == (2, 64, 96, 3)
    assert out.z.shape == out.b.shape == out.r.shape == (2, 8, 12, 384)


@pytest.mark.parametrize("dim", [16, 24])
def test_other_widths_are_consistent(dim):
    m = BaryNet(**{**TINY, "dim": dim})
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (1, 16, 16, 3)), jnp.float32)
    params = m.init(jax.random.key(0), x)
    out = m.apply(params, x)
    assert out.restored.shape == x.shape and out.b.shape == (1, 2, 2, 8 * dim)
    np.testing.assert_allclose(np.asarray(out.r), np.asarray(out.z - out.b), atol=1e-6)
    # b is LayerNorm'ed over channels with the (initial) unit scale and zero bias
    np.testing.assert_allclose(np.asarray(out.b.mean(-1)), 0, atol=1e-4)


def test_bary_blocks_configurable():
    p = jax.eval_shape(lambda: BaryNet(**TINY, bary_blocks=3).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    assert {k for k in p["params"] if k.startswith("barylatent")} == {"barylatent_0", "barylatent_1", "barylatent_2"}


def test_bad_input_shapes_get_clear_errors():
    m = BaryNet(**TINY)
    with pytest.raises(ValueError, match="divisible by 8, got 20x16"):
        jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 20, 16, 3))))
    with pytest.raises(ValueError, match="NHWC input with 3 channels"):
        jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 3, 16, 16))))
    with pytest.raises(ValueError, match="tied to the training patch size"):
        jax.eval_shape(
            lambda: Potentials(2, channels=8, patch_size=64).init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))
        )


def test_bf16_compute_keeps_fp32_params_and_stays_close():
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (1, 16, 16, 3)), jnp.float32)
    params = BaryNet(**TINY).init(jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    ref = BaryNet(**TINY).apply(params, x)
    low = BaryNet(**TINY, dtype=jnp.bfloat16).apply(params, x)
    assert low.restored.dtype == jnp.float32 and low.b.dtype == jnp.bfloat16
    err = float(jnp.max(jnp.abs(low.restored - ref.restored)))
    assert 0 < err < 0.1


def test_pixel_shuffle_matches_pytorch_channel_order():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 12)).astype(np.float32)  # NHWC
    ref = torch.nn.functional.pixel_unshuffle(torch.from_numpy(x).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(pixel_unshuffle(jnp.asarray(x))), ref.numpy())
    ref = torch.nn.functional.pixel_shuffle(torch.from_numpy(x).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x))), ref.numpy())
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(pixel_unshuffle(jnp.asarray(x)))), x)


def test_layernorm_two_pass_variance_is_exact_for_offset_inputs():
    # a large channel mean relative to the spread breaks E[x²]−E[x]² in float32; the two-pass form does not
    x = (300.0 + np.random.default_rng(0).normal(size=(1, 4, 4, 48)) * 0.1).astype(np.float32)
    y = LayerNorm().apply({"params": {"weight": jnp.ones(48), "bias": jnp.zeros(48)}}, jnp.asarray(x))
    xd = x.astype(np.float64)
    ref = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5)
    assert np.max(np.abs(np.asarray(y) - ref)) < 1e-2  # E[x²]−E[x]² in float32 is off by > 10 here


@pytest.mark.parametrize("k,dtype", [(3, jnp.float32), (5, jnp.float32), (3, jnp.bfloat16)])
def test_cpu_depthwise_conv_value_and_gradients_match_the_native_grouped_convolution(k, dtype):
    """The CPU path (shifted sums with a hand-written gradient) against XLA's grouped convolution."""
    from baryir_jax.models.layers import _depthwise_same

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 7, 5)), dtype)
    kernel = jnp.asarray(rng.normal(size=(k, k, 5)), dtype)
    probe = jnp.asarray(rng.normal(size=(2, 9, 7, 5)), jnp.float32)
    p = (k - 1) // 2

    def native(x, kernel):
        return jax.lax.conv_general_dilated(
            x,
            kernel[:, :, None, :],
            (1, 1),
            ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=5,
        )

    def loss(fn):
        return lambda x, kernel: jnp.sum(fn(x, kernel).astype(jnp.float32) * probe)

    tol = 1e-5 if dtype == jnp.float32 else 0.1
    np.testing.assert_allclose(
        np.asarray(_depthwise_same(x, kernel), np.float32),
        np.asarray(native(x, kernel), np.float32),
        atol=tol,
        rtol=tol,
    )
    ours = jax.jit(jax.grad(loss(_depthwise_same), argnums=(0, 1)))(x, kernel)
    ref = jax.jit(jax.grad(loss(native), argnums=(0, 1)))(x, kernel)
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol * 4, rtol=tol)


def _depthwise_group_counts(hlo: str) -> set[int]:
    """feature_group_count of every grouped convolution in an HLO/StableHLO text, leaving out the potentials'
    4-group convolution (what remains are BaryNet's depthwise convolutions, 3·dim, 2·hidden, ... groups)."""
    import re

    counts = {int(n) for n in re.findall(r"feature_group_count\s*=\s*(\d+)", hlo)}
    return counts - {1, 4}


def test_conv_impl_auto_follows_the_devices_not_the_host():
    from baryir_jax.models.layers import resolve_conv_impl

    class Dev:
        def __init__(self, platform):
            self.platform = platform

    assert resolve_conv_impl("auto", jax.devices()) == "shifted"  # the CPU devices of this test run
    assert resolve_conv_impl("auto", [Dev("tpu"), Dev("tpu")]) == "native"
    assert resolve_conv_impl("auto", [Dev("gpu")]) == "native"
    assert resolve_conv_impl("native", jax.devices()) == "native"
    assert resolve_conv_impl("shifted", [Dev("tpu")]) == "shifted"
    with pytest.raises(ValueError, match="must be 'auto', 'native' or 'shifted', got 'fast'"):
        resolve_conv_impl("fast", jax.devices())
    with pytest.raises(ValueError, match="one platform"):
        resolve_conv_impl("auto", [Dev("tpu"), Dev("cpu")])
    with pytest.raises(ValueError, match="'auto' is resolved by resolve_conv_impl"):
        BaryNet(**TINY, conv_impl="auto").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_cpu_training_step_uses_the_shifted_sums_and_native_when_asked():
    """The step baryir-train lowers on this CPU mesh has no depthwise grouped convolution (config 'auto'), and
    has them with conv_impl='native'. (Lowering only: about 10 s.)"""
    from baryir_jax.bench.preflight import lower_train_step
    from baryir_jax.config import ConfigError
    from baryir_jax.evaluate.checkpoint import load_config
    from baryir_jax.train.experiment import Experiment

    c = load_config("configs/demo.py:tiny")
    c.data.patch_size = 16
    exp = Experiment(c, ".", with_data=False)
    assert exp.barynet.conv_impl == "shifted"
    assert _depthwise_group_counts(lower_train_step(exp).as_text()) == set()
    c.model.conv_impl = "native"
    exp = Experiment(c, ".", with_data=False)
    assert 3 * c.model.dim in _depthwise_group_counts(lower_train_step(exp).as_text())
    c.model.conv_impl = "cuda"
    with pytest.raises(ConfigError, match="config.model.conv_impl='cuda': allowed: one of 'auto', 'native', 'shifted'"):
        Experiment(c, ".", with_data=False)
