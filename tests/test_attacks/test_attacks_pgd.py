"""PGD and the inverse-adversarial refinement."""

import pytest
import torch

from robust_w2s.attacks import cross_entropy, evaluation_pgd, feature_distance, inverse_adversarial, pgd


def test_linf_pgd_reaches_the_known_optimum_of_a_linear_model(tm):
    w = tm.two_class_weights()
    model = tm.TwoClassLinear(w)
    x = torch.full((1, *tm.SHAPE), 0.5)
    eps = 0.1
    adv = pgd(model, x, torch.tensor([0]), eps=eps, alpha=eps / 4, steps=20,
              generator=torch.Generator().manual_seed(1))
    expected = x - eps * w.view(1, *tm.SHAPE).sign()
    assert torch.allclose(adv, expected, atol=1e-6)
    # Against label 1 the optimum moves the other way.
    adv1 = pgd(model, x, torch.tensor([1]), eps=eps, alpha=eps / 4, steps=20)
    assert torch.allclose(adv1, x + eps * w.view(1, *tm.SHAPE).sign(), atol=1e-6)


def test_l2_pgd_reaches_the_known_optimum_of_a_linear_model(tm):
    w = tm.two_class_weights()
    model = tm.TwoClassLinear(w)
    x = torch.full((1, *tm.SHAPE), 0.5)
    eps = 1.0  # ||delta||_inf stays far below 0.5, so [0, 1] never clamps
    adv = pgd(model, x, torch.tensor([0]), eps=eps, alpha=eps / 4, steps=100, norm="l2",
              generator=torch.Generator().manual_seed(1))
    expected = x - eps * (w / w.norm()).view(1, *tm.SHAPE)
    assert torch.allclose(adv, expected, atol=1e-5)
    assert (adv - x).flatten(1).norm(dim=1).item() <= eps + 1e-6


def test_same_generator_seed_gives_identical_images_and_global_rng_is_untouched(tm):
    model, x = tm.mlp(5), tm.images(6)
    y = torch.arange(6) % 5
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    runs = [pgd(model, x, y, eps=0.05, steps=3, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    other = pgd(model, x, y, eps=0.05, steps=3, generator=torch.Generator().manual_seed(8))
    no_generator = pgd(model, x, y, eps=0.05, steps=3, norm="l2")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], other)  # the start really comes from the generator
    assert torch.equal(no_generator, pgd(model, x, y, eps=0.05, steps=3, norm="l2"))


def test_random_start_only_when_steps_is_zero(tm):
    model, x = tm.mlp(3), tm.images(4)
    y = torch.zeros(4, dtype=torch.long)
    start = pgd(model, x, y, eps=0.1, steps=0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(start, x)
    assert (start - x).abs().max() <= 0.1 + 1e-6
    assert torch.equal(pgd(model, x, y, eps=0.1, steps=0, random_start=False), x)
    assert torch.equal(pgd(model, x, y, eps=0, steps=5), x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_sample_gets_the_same_adversarial_alone_or_in_a_batch_of_64(tm, norm):
    # Per-sample steps must not depend on the rest of the batch (summed loss, per-sample
    # L2 normalization of the gradient).
    model, x = tm.mlp(4, seed=3), tm.images(64, seed=5)
    y = torch.arange(64) % 4
    kwargs = dict(eps=0.05 if norm == "linf" else 0.5, steps=5, norm=norm, random_start=False)
    batch = pgd(model, x, y, **kwargs)
    alone = pgd(model, x[:1], y[:1], **kwargs)
    assert torch.allclose(batch[:1], alone, atol=1e-6)


def test_ascent_raises_and_descent_lowers_the_objective(tm):
    model, x = tm.mlp(5, seed=2), tm.images(16, seed=2)
    y = torch.arange(16) % 5
    with torch.no_grad():  # evaluation code attacks from inside no_grad
        clean = cross_entropy(model(x), y)
        up = cross_entropy(model(pgd(model, x, y, eps=0.03, steps=5)), y)
        down = cross_entropy(model(pgd(model, x, y, eps=0.03, steps=5, descend=True)), y)
    assert down < clean < up


def test_feature_objective_by_name_pushes_features_away(tm):
    encoder = tm.mlp(8, seed=4)  # used as a feature extractor [B, 8]
    x = tm.images(8, seed=4)
    with torch.no_grad():
        target = encoder(x)
    adv = pgd(encoder, x, target, eps=0.03, steps=5, objective="l2")
    with torch.no_grad():
        assert feature_distance(encoder(adv), target) > 1e-3


def test_inverse_adversarial_makes_the_model_more_confident_in_its_own_prediction(tm):
    model, x = tm.mlp(5, seed=6), tm.images(16, seed=6)
    eps = 2 / 255
    with torch.no_grad():  # the training loop may refine the teacher input inside no_grad
        refined = inverse_adversarial(model, x, eps=eps, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        prediction = model(x).argmax(1)
        before = torch.nn.functional.cross_entropy(model(x), prediction, reduction="none")
        after = torch.nn.functional.cross_entropy(model(refined), prediction, reduction="none")
    assert after.sum() < before.sum()
    assert (after <= before + 1e-6).float().mean() >= 0.9
    assert (refined - x).abs().max() <= eps + 1e-6
    assert refined.min() >= 0 and refined.max() <= 1


def test_inverse_adversarial_reaches_the_linear_optimum_towards_the_prediction(tm):
    w = tm.two_class_weights()
    model = tm.TwoClassLinear(w)
    x = torch.full((1, *tm.SHAPE), 0.5)
    predicted = model(x).argmax(1).item()
    toward = w.view(1, *tm.SHAPE).sign() * (1 if predicted == 0 else -1)
    refined = inverse_adversarial(model, x, eps=0.05, steps=2)
    assert torch.allclose(refined, x + 0.05 * toward, atol=1e-6)


def test_attack_runs_in_eval_fp32_without_autocast_and_restores_modes(tm):
    inner = tm.mlp(3)
    model = tm.Recorder(inner)
    frozen = inner[2]  # a submodule the caller keeps in eval inside a training model
    model.train()
    frozen.eval()
    x = tm.images(4).double()  # float64 in, float32 seen by the model, float64 out
    y = torch.zeros(4, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        adv = pgd(model, x, y, eps=0.03, steps=2)
        inverse_adversarial(model, x, eps=0.03)
    assert model.calls and all(not c["training"] for c in model.calls)
    assert all(c["dtype"] == torch.float32 and not c["autocast"] for c in model.calls)
    assert adv.dtype == torch.float64 and adv.shape == x.shape and not adv.requires_grad
    assert model.training and inner[1].training and not frozen.training
    assert all(p.grad is None for p in model.parameters())


def test_train_mode_is_restored_when_the_model_raises(tm):
    class Failing(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Failing().train()
    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, tm.images(2), torch.zeros(2, dtype=torch.long), eps=0.1)
    assert model.training


def test_pgd_rejects_bad_arguments(tm):
    model, x, y = tm.mlp(3), tm.images(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="'linf'.*'l2'"):
        pgd(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="4/0"):
        pgd(model, x, y, eps="4/0")
    with pytest.raises(ValueError):
        pgd(model, x, y, eps=0.1, steps=-1)
    with pytest.raises(ValueError, match="scalar"):
        pgd(model, x, y, eps=0.1, objective=lambda out, t: (out ** 2).sum(1))
    assert torch.allclose(
        pgd(model, x, y, eps="4/255", steps=2), pgd(model, x, y, eps=4 / 255, steps=2)
    )


def test_start_noise_std_starts_near_x_and_keeps_the_old_default(tm):
    model, x = tm.mlp(3), tm.images(8).clamp(0.1, 0.9)
    y = torch.arange(8) % 3
    # steps=0 returns the start itself: x + std * N(0, I), within the ball, from the generator.
    start = pgd(model, x, y, eps=4 / 255, steps=0, start_noise_std=1e-3,
                generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(start, (x + 1e-3 * noise).clamp(x - 4 / 255, x + 4 / 255), atol=1e-7)
    assert pgd(model, x, y, eps=4 / 255, steps=0, start_noise_std=0.0).equal(x)
    # Without the keyword nothing changes: same images as the uniform random start.
    a = pgd(model, x, y, eps=4 / 255, steps=2, generator=torch.Generator().manual_seed(2))
    b = pgd(model, x, y, eps=4 / 255, steps=2, generator=torch.Generator().manual_seed(2),
            start_noise_std=None)
    assert a.equal(b)
    with pytest.raises(ValueError):
        pgd(model, x, y, eps=4 / 255, start_noise_std=-1.0)


def test_inverse_adversarial_accepts_a_known_prediction(tm):
    model, x = tm.mlp(3), tm.images(8)
    prediction = model(x).argmax(dim=1)
    a = inverse_adversarial(model, x, eps=2 / 255, steps=2, generator=torch.Generator().manual_seed(0))
    b = inverse_adversarial(model, x, eps=2 / 255, steps=2, generator=torch.Generator().manual_seed(0),
                            prediction=prediction)
    assert a.equal(b)


class _Dtypes(torch.nn.Module):
    """Wraps a model; per forward records the autocast dtype in effect (None: off), the wrapped model's
    own output dtype, and, through a hook, the dtype of the gradient that reaches the input."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.autocast, self.outputs, self.input_grads = [], [], []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = torch.is_autocast_enabled("cpu")
        self.autocast.append(torch.get_autocast_dtype("cpu") if on else None)
        if x.requires_grad:
            x.register_hook(lambda grad: self.input_grads.append(grad.dtype))
        output = self.model(x)
        self.outputs.append(output.dtype)
        return output


@pytest.mark.parametrize("attack", ["pgd", "inverse"])
def test_a_bf16_training_attack_runs_under_autocast_with_fp32_loss_and_input_gradient(tm, attack):
    model = _Dtypes(tm.mlp(3))
    x = tm.images(8).double()
    y = torch.arange(8) % 3
    losses = []

    def objective(output, target):  # the attack's own cross-entropy, its input and result recorded
        loss = cross_entropy(output, target)
        losses.append((output.dtype, loss.dtype))
        return loss

    eps = 0.03
    if attack == "pgd":
        adv = pgd(model, x, y, eps=eps, steps=3, objective=objective, precision="bf16")
    else:
        adv = inverse_adversarial(model, x, eps=eps, steps=3, precision="bf16")
    assert model.autocast and all(dtype == torch.bfloat16 for dtype in model.autocast)
    assert all(dtype == torch.bfloat16 for dtype in model.outputs)  # the forwards really ran in bf16
    assert len(model.input_grads) == 3 and all(dtype == torch.float32 for dtype in model.input_grads)
    assert attack != "pgd" or losses == [(torch.float32, torch.float32)] * 3
    assert adv.dtype == torch.float64 and not adv.requires_grad
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > eps / 2  # it moved


def test_bf16_pgd_reaches_the_known_optimum_of_a_linear_model(tm):
    """The bf16 forward's gradient keeps fp32's sign: the same Linf optimum x - eps * sign(w)."""
    w = tm.two_class_weights()
    model = tm.TwoClassLinear(w)
    x = torch.full((1, *tm.SHAPE), 0.5)
    eps = 0.1
    adv = pgd(model, x, torch.tensor([0]), eps=eps, alpha=eps / 4, steps=20, precision="bf16",
              generator=torch.Generator().manual_seed(1))
    assert torch.allclose(adv, x - eps * w.view(1, *tm.SHAPE).sign(), atol=1e-6)


def test_precision_defaults_to_fp32_and_rejects_unknown_values(tm):
    model = _Dtypes(tm.mlp(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's autocast does not leak in
        pgd(model, tm.images(2), torch.tensor([0, 1]), eps=0.03, steps=1)
    assert model.autocast == [None] and model.outputs == [torch.float32]
    with pytest.raises(ValueError, match="unknown precision 'fp16'; valid: 'fp32', 'bf16'"):
        pgd(model, tm.images(2), torch.tensor([0, 1]), eps=0.03, steps=1, precision="fp16")


def test_evaluation_pgd_never_runs_under_autocast():
    """Evaluation attacks stay fp32 (DESIGN.md section 3), even when called inside a bf16 region."""
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(12, 3)

        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu") or x.dtype != torch.float32)
            return self.linear(x.flatten(1))

    attack = evaluation_pgd(eps="4/255", steps=3, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attack(Recorder(), torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))
    assert seen and not any(seen)
