"""AutoAttack: published settings, cascade semantics, RNG, model state, no normalization."""

import importlib

import pytest
import torch

from robust_w2s.attacks import VERSIONS, autoattack

aa_module = importlib.import_module("robust_w2s.attacks.autoattack")  # `attacks.autoattack` is the function
TINY = dict(apgd_steps=5, fab_steps=5, square_queries=100)


def _data(tm, n_classes, batch=16, seed=3, model_seed=2, wrong=3):
    """A gradient-masked model (APGD/FAB stall, Square succeeds), its own predictions as
    labels, and the first ``wrong`` labels deliberately wrong."""
    model = tm.Quantized(tm.mlp(n_classes, seed=model_seed))
    x = tm.images(batch, seed=seed)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:wrong] = (y[:wrong] + 1) % n_classes
    return model, x, y


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_cascade_is_per_sample_worst_case(tm, n_classes):
    model, x, y = _data(tm, n_classes)
    eps = 0.2
    full = autoattack(model, x, y, eps=eps, n_classes=n_classes, **TINY)
    subset = autoattack(model, x, y, eps=eps, n_classes=n_classes, version="apgd", **TINY)
    with torch.no_grad():
        clean_correct = model(x).argmax(1) == y
        fooled_by_result = model(full.adversarial).argmax(1) != y

    assert list(full.robust_after) == list(VERSIONS["standard"])
    assert list(subset.robust_after) == list(VERSIONS["apgd"])
    # The shared first stages are the same computation (same seed, same points).
    for name in VERSIONS["apgd"]:
        assert torch.equal(full.robust_after[name], subset.robust_after[name])
    # Worst case: robust under the full cascade implies robust under the subset, and the
    # black-box Square stage breaks points the gradient attacks could not.
    assert not (full.robust & ~subset.robust).any()
    assert full.robust.sum() < subset.robust.sum()
    # Cumulative stages, clean-correctness, and agreement with the model's own outputs.
    masks = [clean_correct] + [full.robust_after[name] for name in VERSIONS["standard"]]
    for before, after in zip(masks, masks[1:]):
        assert not (after & ~before).any()
    assert torch.equal(full.robust, full.robust_after["square"])
    assert not (full.robust & ~clean_correct).any()
    assert torch.equal(full.robust, ~fooled_by_result & clean_correct)
    # Clean-misclassified and robust samples keep their clean image (never replaced).
    untouched = full.robust | ~clean_correct
    assert torch.equal(full.adversarial[untouched], x[untouched])
    assert (full.adversarial - x).abs().max() <= eps + 1e-6


def test_clean_misclassified_points_are_never_attacked(tm, monkeypatch):
    model, x, y = _data(tm, 4, wrong=5)
    seen = []
    original = aa_module._run
    monkeypatch.setattr(aa_module, "_run", lambda a, xi, yi: seen.append(len(xi)) or original(a, xi, yi))
    result = autoattack(model, x, y, eps=0.1, n_classes=4, **TINY)
    with torch.no_grad():
        n_correct = int((model(x).argmax(1) == y).sum())
    assert seen[0] == n_correct  # the first attack gets exactly the clean-correct points
    assert all(later <= earlier for earlier, later in zip(seen, seen[1:]))
    assert not result.robust[:5].any() and torch.equal(result.adversarial[:5], x[:5])


@pytest.mark.parametrize("n_classes, targets", [(10, 9), (12, 9), (4, 3), (2, 1)])
def test_default_settings_are_the_published_ones(tm, monkeypatch, n_classes, targets):
    built = {}
    original = aa_module._build_attacks

    def capture(*args, **kwargs):
        built.update(original(*args, **kwargs))
        return built

    monkeypatch.setattr(aa_module, "_build_attacks", capture)
    model = tm.mlp(n_classes)
    x = tm.images(2)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % n_classes  # nothing to attack: stays fast
    autoattack(model, x, wrong, eps="8/255", n_classes=n_classes, seed=5)

    apgd, apgdt, fab, square = (built[name] for name in VERSIONS["standard"])
    assert (apgd.steps, apgd.n_restarts, apgd.loss, apgd.eot_iter, apgd.thr_decr) == (100, 1, "ce", 1, 0.75)
    assert (apgdt.steps, apgdt.n_restarts, apgdt.n_target_classes) == (100, 1, targets)
    assert (fab.steps, fab.n_restarts, fab.multi_targeted, fab.n_target_classes) == (100, 1, True, targets)
    assert (fab.alpha_max, fab.eta, fab.beta) == (0.1, 1.05, 0.9)
    assert (square.n_queries, square.n_restarts, square.p_init) == (5000, 1, 0.8)
    assert (square.loss, square.rescale_schedule) == ("margin", False)
    for attack in built.values():
        assert attack.norm == "Linf" and attack.eps == 8 / 255 and attack.seed == 5
        assert attack.normalization_used is None  # torchattacks must not normalize
        assert type(attack).__name__ != "AutoAttack"


def test_seeded_runs_repeat_and_leave_the_global_rng_alone(tm):
    model, x, y = _data(tm, 5)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    first = autoattack(model, x, y, eps=0.2, n_classes=5, seed=1, **TINY)
    assert torch.equal(torch.get_rng_state(), state)
    again = autoattack(model, x, y, eps=0.2, n_classes=5, seed=1, **TINY)
    assert torch.equal(first.adversarial, again.adversarial)
    assert torch.equal(first.robust, again.robust)


def test_model_state_is_restored_and_attacks_run_in_eval_fp32(tm, monkeypatch):
    inner = tm.mlp(4, seed=1)
    inner[1].weight.requires_grad_(False)  # a caller-frozen parameter stays frozen
    # Gradient-masked, so that points survive APGD and FAB (which calls .backward()) runs.
    model = tm.Recorder(tm.Quantized(inner)).train()
    x = tm.images(8, seed=1).double()
    with torch.no_grad():
        y = model.model(x.float()).argmax(1)
    ran = []
    original = aa_module._run
    monkeypatch.setattr(aa_module, "_run", lambda a, *xy: ran.append(type(a).__name__) or original(a, *xy))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = autoattack(model, x, y, eps=0.1, n_classes=4, **TINY)
    assert "FAB" in ran
    assert model.calls and all(not c["training"] for c in model.calls)
    assert all(c["dtype"] == torch.float32 and not c["autocast"] for c in model.calls)
    assert model.training
    # FAB calls .backward(): parameters must still have no .grad, flags as before.
    assert all(p.grad is None for p in model.parameters())
    assert not inner[1].weight.requires_grad
    assert all(p.requires_grad for name, p in inner.named_parameters() if name != "1.weight")
    assert result.adversarial.dtype == torch.float64 and result.robust.dtype == torch.bool


def test_torchattacks_does_not_normalize_a_model_named_robmodel(tm):
    # torchattacks reads mean/std from any model whose class is named "RobModel" and then
    # feeds it (x - mean) / std-space perturbations; the model must only ever see [0, 1]
    # pixels inside the eps-ball.
    class RobModel(tm.Recorder):
        def forward(self, x):
            self.inputs.append(x.detach().clone())
            return super().forward(x)

    model = RobModel(tm.mlp(4, seed=1))
    model.mean, model.std, model.inputs = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], []
    x = tm.images(8, seed=1)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.05
    autoattack(model, x, y, eps=eps, n_classes=4, version="apgd", **TINY)
    seen = torch.cat(model.inputs)
    assert seen.min() >= 0 and seen.max() <= 1
    nearest = (seen[:, None] - x[None]).flatten(2).abs().amax(2).amin(1)
    assert nearest.max() <= eps + 1e-6


def test_apgd_t_works_with_fewer_than_four_classes(tm):
    # Targeted DLR needs 4 logits; below that APGD-T must still attack (targeted CE).
    model = tm.TwoClassLinear(tm.two_class_weights())
    padded = torch.nn.Sequential(model, torch.nn.ConstantPad1d((0, 1), -5.0))  # 3 classes
    x = torch.full((2, *tm.SHAPE), 0.5)
    for net, k in ((model, 2), (padded, 3)):
        with torch.no_grad():
            y = net(x).argmax(1)
        attacks = aa_module._build_attacks(
            aa_module._Fp32Model(net), ("apgd-t",), eps=0.1, norm="linf", n_classes=k,
            seed=0, apgd_steps=10, fab_steps=1, square_queries=1, device=x.device)
        adv = aa_module._run(attacks["apgd-t"], x, y)
        with torch.no_grad():
            assert (net(adv).argmax(1) != y).all()


def test_eps_zero_returns_clean_images_and_clean_accuracy(tm):
    model, x, y = _data(tm, 3)
    result = autoattack(model, x, y, eps=0, n_classes=3, **TINY)
    with torch.no_grad():
        assert torch.equal(result.robust, model(x).argmax(1) == y)
    assert torch.equal(result.adversarial, x)


def test_autoattack_rejects_bad_arguments(tm):
    model, x, y = _data(tm, 3)
    with pytest.raises(ValueError, match="'standard'.*'apgd'"):
        autoattack(model, x, y, eps=0.1, n_classes=3, version="plus")
    with pytest.raises(ValueError, match="n_classes=4"):
        autoattack(model, x, y, eps=0.1, n_classes=4, **TINY)
    with pytest.raises(ValueError, match="'linf'.*'l2'"):
        autoattack(model, x, y, eps=0.1, n_classes=3, norm="l1")
    with pytest.raises(ValueError):
        autoattack(model, x, y, eps="8/0", n_classes=3)
    with pytest.raises(ValueError):
        autoattack(model, x, y, eps=0.1, n_classes=1)


@pytest.mark.slow
def test_published_settings_end_to_end(tm):
    # Full published counts (5000 Square queries) on a tiny model: seconds, not part of the
    # default suite (run with -m slow).
    model, x, y = _data(tm, 10, batch=8)
    result = autoattack(model, x, y, eps="16/255", n_classes=10)
    with torch.no_grad():
        clean_correct = model(x).argmax(1) == y
        fooled = model(result.adversarial).argmax(1) != y
    assert torch.equal(result.robust, clean_correct & ~fooled)
    assert (result.adversarial - x).abs().max() <= 16 / 255 + 1e-6
