"""softmax_cross_entropy with -inf logits (vocabulary masking): without label smoothing the loss is
the finite -log softmax over the allowed classes (the label's logit is gathered, the -inf ones never
enter a product) and the masked classes get zero gradient; with smoothing the target gives every class
mass e/K, so the loss is +inf."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlfs.functional as F

NEG = -np.inf
LOGITS = np.array([[1.5, NEG, -0.5, 0.25, NEG], [NEG, 2.0, NEG, 0.0, -1.0]], np.float32)
LABELS = np.array([3, 1])


def _reference(logits, labels):
    """Mean over rows of -log softmax over the finite logits only, in float64."""
    out = []
    for z, y in zip(logits.astype(np.float64), labels):
        allowed = z[np.isfinite(z)]
        out.append(np.log(np.sum(np.exp(allowed - allowed.max()))) + allowed.max() - z[y])
    return np.mean(out)


def test_masked_vocabulary_without_smoothing_is_finite():
    loss, grad = jax.value_and_grad(F.softmax_cross_entropy)(jnp.asarray(LOGITS), jnp.asarray(LABELS))
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx(_reference(LOGITS, LABELS), rel=1e-6)
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[~np.isfinite(LOGITS)] == 0)  # masked classes: probability 0, no gradient
    np.testing.assert_allclose(grad.sum(axis=-1), 0, atol=1e-7)  # (p - onehot) / N sums to 0 per row


def test_masked_vocabulary_with_smoothing_is_inf():
    loss = F.softmax_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS), label_smoothing=0.1)
    assert float(loss) == np.inf


def test_label_on_a_masked_class_is_inf():
    labels = np.array([1, 1])  # row 0's class 1 is masked: probability 0
    assert float(F.softmax_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(labels))) == np.inf
