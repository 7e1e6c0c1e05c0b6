"""jdlfs.decode: greedy, sampling and beam search over a step function.

The toy models here are small enough to enumerate every sequence, so beam
search is checked against the exact answer, and their logits depend on the
cache (the running sum of the tokens fed so far), so a cache that is not
carried or not reordered with its beam gives wrong answers.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdlfs import decode

V, EOS, PAD = 5, 2, 0


def toy(seed: int = 0, vocab: int = V, eos_bias: float = 0.0):
    """A random model whose next-token logits depend on the token and on the
    cache (the sum of every token fed so far, mod 3). Returns the step
    function and ``logp(prefix_tokens) -> log-probs of the next token``."""
    table = np.asarray(jax.random.normal(jax.random.key(seed), (vocab, 3, vocab))) * 2.0
    table[..., EOS] += eos_bias  # < 0: hypotheses live longer, so beams must travel with their caches

    def step_fn(tokens, position, cache):
        total = cache["sum"] + tokens
        return jnp.asarray(table)[tokens, total % 3], {"sum": total}

    def logp(tokens):
        total = sum(tokens)
        row = table[tokens[-1], total % 3].astype(np.float64)
        return row - np.log(np.sum(np.exp(row - row.max()))) - row.max()

    return step_fn, logp


def cache0(rows):
    return {"sum": jnp.zeros((rows,), jnp.int32)}


def reference_greedy(logp, start, max_len):
    seq = [start]
    out = []
    for _ in range(max_len):
        t = int(np.argmax(logp(seq)))
        out.append(t)
        seq.append(t)
        if t == EOS:
            break
    return out + [PAD] * (max_len - len(out))


def exact_best(logp, start, max_len, alpha):
    """The best-scoring hypothesis over every sequence (ended by EOS, or of length max_len)."""
    best, best_score = None, -np.inf
    for length in range(1, max_len + 1):
        for body in itertools.product([t for t in range(V) if t != EOS], repeat=length - 1):
            for last in range(V):
                if length < max_len and last != EOS:
                    continue
                seq = list(body) + [last]
                lp = sum(logp([start] + seq[:j])[seq[j]] for j in range(length))
                score = lp / ((5.0 + length) / 6.0) ** alpha
                if score > best_score:
                    best, best_score = seq, score
    return best + [PAD] * (max_len - len(best)), best_score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_step_by_step_argmax(seed):
    step_fn, logp = toy(seed)
    start = jnp.array([1, 3, 4], jnp.int32)
    ids = jax.jit(lambda s: decode.greedy(step_fn, cache0(3), s, max_len=6, eos_id=EOS))(start)
    assert ids.shape == (3, 6) and ids.dtype == jnp.int32
    for r, s in enumerate([1, 3, 4]):
        assert ids[r].tolist() == reference_greedy(logp, s, 6)


def test_greedy_keeps_eos_then_pads():
    def step_fn(tokens, position, cache):
        # position 0: token 4 wins; from position 1 on EOS wins
        logits = jnp.where(jnp.arange(V) == EOS, 10.0, 0.0) * (position >= 1) + jnp.where(jnp.arange(V) == 4, 5.0, 0.0)
        return jnp.broadcast_to(logits, (tokens.shape[0], V)), cache

    ids = decode.greedy(step_fn, cache0(2), jnp.array([1, 1]), max_len=8, eos_id=EOS)
    assert ids.tolist() == [[4, EOS] + [PAD] * 6] * 2
    # without an eos_id nothing stops: the row keeps emitting EOS, the argmax
    ids = decode.greedy(step_fn, cache0(2), jnp.array([1, 1]), max_len=4)
    assert ids.tolist() == [[4, EOS, EOS, EOS]] * 2


def test_sample_is_deterministic_for_a_key_and_follows_temperature():
    step_fn, logp = toy(3)
    start = jnp.full((400,), 1, jnp.int32)
    f = jax.jit(lambda k, t: decode.sample(step_fn, cache0(400), start, k, max_len=1, temperature=t), static_argnums=1)
    a, b = f(jax.random.key(0), 1.0), f(jax.random.key(0), 1.0)
    assert a.tolist() == b.tolist()
    assert a.tolist() != f(jax.random.key(1), 1.0).tolist()
    # first-token frequencies match softmax(logits / T): low T concentrates on the argmax
    p1 = np.exp(logp([1]))
    freq = np.bincount(np.asarray(a[:, 0]), minlength=V) / 400
    assert np.abs(freq - p1).max() < 0.1
    cold = np.asarray(f(jax.random.key(0), 0.05)[:, 0])
    assert np.mean(cold == np.argmax(p1)) > 0.97


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_one_equals_greedy(seed):
    step_fn, _ = toy(seed)
    start = jnp.array([1, 3, 4, 0], jnp.int32)
    g = decode.greedy(step_fn, cache0(4), start, max_len=7, eos_id=EOS)
    for alpha in (0.0, 0.6, 2.0):
        ids, _ = decode.beam_search(step_fn, cache0(4), start, beam_size=1, eos_id=EOS, max_len=7, length_penalty=alpha)
        assert ids.tolist() == g.tolist()


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_wide_beam_finds_the_exact_best_sequence(seed):
    """A beam as wide as the number of prefixes is exhaustive; with no length
    penalty the stopping rule is exact, so the answer must be the global best."""
    step_fn, logp = toy(seed)
    max_len = 3
    start = jnp.array([1, 3], jnp.int32)
    ids, scores = jax.jit(
        lambda s: decode.beam_search(
            step_fn, cache0(2), s, beam_size=V**max_len, eos_id=EOS, max_len=max_len, length_penalty=0.0
        )
    )(start)
    for r, s in enumerate([1, 3]):
        best, best_score = exact_best(logp, s, max_len, 0.0)
        assert ids[r].tolist() == best
        np.testing.assert_allclose(float(scores[r]), best_score, rtol=1e-5, atol=1e-5)


def test_beam_search_beats_or_ties_greedy_and_reorders_the_cache():
    step_fn, logp = toy(5)
    start = jnp.arange(V, dtype=jnp.int32)
    g = decode.greedy(step_fn, cache0(V), start, max_len=4, eos_id=EOS)
    ids, scores = decode.beam_search(step_fn, cache0(V), start, beam_size=4, eos_id=EOS, max_len=4, length_penalty=0.0)

    def score(s, seq):
        seq = seq[: seq.index(EOS) + 1] if EOS in seq else seq  # token 0 (= PAD) is a real token here
        return sum(logp([s] + seq[:j])[seq[j]] for j in range(len(seq)))

    for r in range(V):
        # the reported score is the true log-prob of the returned sequence: only true if the
        # cache travelled with its beam
        np.testing.assert_allclose(float(scores[r]), score(r, ids[r].tolist()), rtol=1e-5, atol=1e-5)
        assert float(scores[r]) >= score(r, g[r].tolist()) - 1e-5


def test_beam_search_output_convention():
    step_fn, _ = toy(6)
    ids, scores = decode.beam_search(
        step_fn, cache0(3), jnp.array([1, 2, 3]), beam_size=3, eos_id=EOS, max_len=6, length_penalty=0.6
    )
    assert ids.shape == (3, 6) and ids.dtype == jnp.int32 and scores.shape == (3,)
    for row in ids.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_len": 0}, "max_len"),
        ({"max_len": 2.5}, "max_len"),
        ({"max_len": 3, "eos_id": -1}, "eos_id"),
    ],
)
def test_greedy_refuses_bad_arguments(kwargs, match):
    step_fn, _ = toy()
    with pytest.raises(ValueError, match=match):
        decode.greedy(step_fn, cache0(2), jnp.array([1, 1]), **kwargs)


def test_bad_start_tokens_cache_beam_and_temperature():
    step_fn, _ = toy()
    with pytest.raises(ValueError, match="start_tokens"):
        decode.greedy(step_fn, cache0(2), jnp.array([[1, 1]]), max_len=3)
    with pytest.raises(ValueError, match="start_tokens"):
        decode.greedy(step_fn, cache0(2), jnp.array([1.0, 1.0]), max_len=3)
    with pytest.raises(ValueError, match=r"cache leaf \['sum'\].*leading axis 2"):
        decode.greedy(step_fn, cache0(3), jnp.array([1, 1]), max_len=3)
    with pytest.raises(ValueError, match="beam_size"):
        decode.beam_search(step_fn, cache0(2), jnp.array([1, 1]), beam_size=0, eos_id=EOS, max_len=3)
    with pytest.raises(ValueError, match="length_penalty"):
        decode.beam_search(step_fn, cache0(2), jnp.array([1, 1]), beam_size=2, eos_id=EOS, max_len=3, length_penalty=-1)
    with pytest.raises(ValueError, match="temperature"):
        decode.sample(step_fn, cache0(2), jnp.array([1, 1]), jax.random.key(0), max_len=3, temperature=0.0)


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.uint8, jnp.int64, jnp.uint32])
def test_start_tokens_of_any_integer_width(dtype):
    step_fn, _ = toy()
    ref = decode.greedy(step_fn, cache0(2), jnp.array([1, 3], jnp.int32), max_len=4, eos_id=EOS)
    got = decode.greedy(step_fn, cache0(2), np.array([1, 3], dtype=dtype), max_len=4, eos_id=EOS)
    assert got.tolist() == ref.tolist()


def true_logp(logp, start, seq):
    seq = seq[: seq.index(EOS) + 1] if EOS in seq else seq  # token 0 (= PAD) is a real token here
    return sum(logp([start] + seq[:j])[seq[j]] for j in range(len(seq))), len(seq)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_scores_are_the_true_normalised_log_probs(seed, alpha):
    """Long-lived beams (EOS made unlikely) in slots other than 0: a cache not
    reordered with its beam, or a wrong length penalty, changes the scores."""
    step_fn, logp = toy(seed, eos_bias=-4.0)
    start = jnp.arange(V, dtype=jnp.int32)
    ids, scores = jax.jit(
        lambda s: decode.beam_search(step_fn, cache0(V), s, beam_size=3, eos_id=EOS, max_len=6, length_penalty=alpha)
    )(start)
    for r in range(V):
        lp, length = true_logp(logp, r, ids[r].tolist())
        np.testing.assert_allclose(float(scores[r]), lp / ((5.0 + length) / 6.0) ** alpha, rtol=1e-5, atol=1e-5)


def test_sample_accepts_numpy_scalars_for_temperature():
    step_fn, _ = toy()
    a = decode.sample(step_fn, cache0(2), jnp.array([1, 1]), jax.random.key(0), max_len=3, temperature=np.float32(0.5))
    b = decode.sample(step_fn, cache0(2), jnp.array([1, 1]), jax.random.key(0), max_len=3, temperature=0.5)
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize(
    "alpha, same_as",
    [(np.float32(0.5), 0.5), (np.float64(0.6), 0.6), (np.int64(1), 1.0), (np.float16(2.0), 2.0), (np.uint8(0), 0.0)],
)
def test_beam_search_accepts_numpy_scalars(alpha, same_as):
    step_fn, _ = toy(2, eos_bias=-2.0)
    start = jnp.arange(V, dtype=jnp.int32)
    want = decode.beam_search(step_fn, cache0(V), start, beam_size=3, eos_id=EOS, max_len=5, length_penalty=same_as)
    got = decode.beam_search(
        step_fn,
        cache0(V),
        start,
        beam_size=np.int64(3),
        eos_id=np.uint8(EOS),
        max_len=np.int32(5),
        length_penalty=alpha,
        pad_id=np.int16(PAD),
        start_position=np.int64(0),
    )
    assert got[0].tolist() == want[0].tolist()
    np.testing.assert_array_equal(got[1], want[1])


def test_greedy_and_sample_accept_numpy_scalars():
    step_fn, _ = toy(4)
    start = jnp.array([1, 3])
    want = decode.greedy(step_fn, cache0(2), start, max_len=5, eos_id=EOS)
    got = decode.greedy(step_fn, cache0(2), start, max_len=np.int64(5), eos_id=np.int8(EOS), pad_id=np.uint16(PAD))
    assert got.tolist() == want.tolist()
    key = jax.random.key(3)
    want = decode.sample(step_fn, cache0(2), start, key, max_len=4, temperature=2.0)
    for t in (np.int32(2), np.float16(2.0), jnp.float32(2.0)):
        assert (
            decode.sample(step_fn, cache0(2), start, key, max_len=np.uint8(4), temperature=t).tolist() == want.tolist()
        )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5, "0.6", True, np.array([0.6, 1.0]), None])
def test_length_penalty_and_temperature_must_be_finite_numbers(bad):
    step_fn, _ = toy()
    with pytest.raises(ValueError, match="length_penalty must be a finite number >= 0"):
        decode.beam_search(
            step_fn, cache0(2), jnp.array([1, 1]), beam_size=2, eos_id=EOS, max_len=3, length_penalty=bad
        )
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        decode.sample(step_fn, cache0(2), jnp.array([1, 1]), jax.random.key(0), max_len=3, temperature=bad)


def test_two_argument_step_functions_are_accepted():
    """``step_fn(tokens, cache)`` (no position) decodes exactly as the three-argument form."""
    step3, _ = toy(1, eos_bias=-1.0)

    def step2(tokens, cache):
        return step3(tokens, None, cache)

    start = jnp.array([1, 3, 4], jnp.int32)
    for run in (
        lambda f: decode.greedy(f, cache0(3), start, max_len=5, eos_id=EOS),
        lambda f: decode.sample(f, cache0(3), start, key=jax.random.key(0), max_len=5, eos_id=EOS),
        lambda f: decode.beam_search(f, cache0(3), start, beam_size=3, max_len=5, eos_id=EOS),  # (ids, scores)
    ):
        for got, want in zip(jax.tree.leaves(run(step2)), jax.tree.leaves(run(step3))):
            np.testing.assert_array_equal(got, want)
    # a lambda and a step with an optional third parameter count as the two-argument form too
    np.testing.assert_array_equal(
        decode.greedy(lambda t, c: step2(t, c), cache0(3), start, max_len=5, eos_id=EOS),
        decode.greedy(step3, cache0(3), start, max_len=5, eos_id=EOS),
    )
    assert not decode._takes_position(lambda tokens, cache, scale=1.0: None)
    assert decode._takes_position(lambda *args: None) and decode._takes_position(step3)
