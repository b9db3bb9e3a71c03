"""Property: every attack returns images inside the eps-ball and inside [0, 1]."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robust_w2s.attacks import autoattack, inverse_adversarial, pgd

TOLERANCE = 1e-6
# database=None: no example database written into the repository.
EXAMPLES = settings(max_examples=25, deadline=None, database=None)

eps_values = st.floats(min_value=0.0, max_value=0.3, allow_nan=False)
image_kinds = st.sampled_from(["uniform", "zeros", "ones", "binary", "mid"])
batch_sizes = st.integers(min_value=1, max_value=4)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
class_counts = st.sampled_from([2, 3, 5])


def _images(kind, batch, seed, shape):
    # Saturated images (all 0 / all 1) are where a missing clamp or projection shows.
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand((batch, *shape), generator=generator)
    return {
        "uniform": uniform,
        "zeros": torch.zeros_like(uniform),
        "ones": torch.ones_like(uniform),
        "binary": (uniform > 0.5).float(),
        "mid": torch.full_like(uniform, 0.5),
    }[kind]


_MODELS = {}


def _model(tm, n_classes):
    # Built once per class count: hypothesis runs each test body many times.
    if n_classes not in _MODELS:
        _MODELS[n_classes] = tm.mlp(n_classes, seed=n_classes)
    return _MODELS[n_classes]


def _assert_in_ball(adv, x, eps, norm="linf"):
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert torch.isfinite(adv).all()
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + TOLERANCE).all(), float(size.max() - eps)


@EXAMPLES
@given(eps=eps_values, kind=image_kinds, batch=batch_sizes, seed=seeds, k=class_counts,
       norm=st.sampled_from(["linf", "l2"]), steps=st.integers(0, 4), descend=st.booleans())
def test_pgd_stays_in_the_ball(tm, eps, kind, batch, seed, k, norm, steps, descend):
    x = _images(kind, batch, seed, tm.SHAPE)
    y = torch.arange(batch) % k
    adv = pgd(_model(tm, k), x, y, eps=eps, steps=steps, norm=norm, descend=descend,
              generator=torch.Generator().manual_seed(seed))
    _assert_in_ball(adv, x, eps, norm)


@EXAMPLES
@given(eps=eps_values, kind=image_kinds, batch=batch_sizes, seed=seeds, k=class_counts)
def test_pgd_with_large_step_stays_in_the_ball(tm, eps, kind, batch, seed, k):
    # A step much larger than eps must still be projected back.
    x = _images(kind, batch, seed, tm.SHAPE)
    adv = pgd(_model(tm, k), x, torch.zeros(batch, dtype=torch.long), eps=eps, alpha=1.0, steps=2)
    _assert_in_ball(adv, x, eps)


@EXAMPLES
@given(eps=eps_values, kind=image_kinds, batch=batch_sizes, seed=seeds, k=class_counts)
def test_inverse_adversarial_stays_in_the_ball(tm, eps, kind, batch, seed, k):
    x = _images(kind, batch, seed, tm.SHAPE)
    refined = inverse_adversarial(_model(tm, k), x, eps=eps, generator=torch.Generator().manual_seed(seed))
    _assert_in_ball(refined, x, eps)


@settings(max_examples=10, deadline=None, database=None)
@given(eps=eps_values, kind=image_kinds, batch=batch_sizes, seed=seeds, k=class_counts,
       norm=st.sampled_from(["linf", "l2"]), version=st.sampled_from(["standard", "apgd"]))
def test_autoattack_stays_in_the_ball(tm, eps, kind, batch, seed, k, norm, version):
    x = _images(kind, batch, seed, tm.SHAPE)
    model = tm.Quantized(_model(tm, k)) if seed % 2 else _model(tm, k)
    with torch.no_grad():
        y = model(x).argmax(1)
    result = autoattack(model, x, y, eps=eps, norm=norm, version=version, n_classes=k,
                        seed=seed, apgd_steps=3, fab_steps=3, square_queries=20)
    _assert_in_ball(result.adversarial, x, eps, norm)
    assert result.robust.shape == (batch,) and result.robust.dtype == torch.bool
