"""Each objective against a value computed by hand on a tiny batch, and what each method declares."""
import math

import pytest
import torch

from robust_w2s.align import methods as M
from robust_w2s.errors import UserError

LN2, LN3 = math.log(2), math.log(3)


def test_w2s_loss_by_hand():
    adv = torch.tensor([[0.0, 0.0], [LN3, 0.0]])          # p = [.5, .5], [.75, .25]
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    loss, terms = M.w2s_loss(adv, target, torch.tensor([0, 0]), torch.tensor([0.5, 0.25]))
    first = 0.5 * LN2 + 0.5 * LN2
    second = 0.75 * 0.5 * math.log(16 / 3) + 0.25 * math.log(4 / 3)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    assert terms["w"].item() == pytest.approx(0.375)


def test_eur_weights_are_entropy_over_entropy_plus_median_in_unit_interval():
    probs = torch.softmax(torch.randn(33, 5, generator=torch.Generator().manual_seed(0)) * 3, dim=1)
    h = -(probs * probs.log()).sum(dim=1)
    kappa = h.median()
    weights = M.eur_weights(probs, kappa)
    assert torch.allclose(weights, h / (h + kappa), atol=1e-6)
    assert (weights >= 0).all() and (weights < 1).all()
    uniform = torch.full((1, 2), 0.5)
    assert M.eur_weights(uniform, torch.tensor(LN2)).item() == pytest.approx(0.5)
    assert M.eur_weights(torch.tensor([[1.0, 0.0]]), torch.tensor(LN2)).item() == 0.0


def test_adv_w2s_method_wires_eur_iar_and_attacks_against_the_clean_teacher():
    settings = M.MethodSettings(name="adv-w2s")  # defaults: EUR and IAR
    method = M.get_method(settings)
    assert method.needs == {"teacher_probs", "teacher_entropy_median", "refined_teacher_probs",
                            "adv_logits", "self_labels"}
    inputs = {"teacher_probs": torch.tensor([[0.5, 0.5], [0.9, 0.1]]), "teacher_entropy_median": torch.tensor(0.4),
              "refined_teacher_probs": torch.tensor([[0.6, 0.4], [1.0, 0.0]]),
              "adv_logits": torch.tensor([[0.3, -0.2], [1.0, 2.0]]), "self_labels": torch.tensor([1, 0])}
    w = M.eur_weights(inputs["teacher_probs"], inputs["teacher_entropy_median"])
    expected, _ = M.w2s_loss(inputs["adv_logits"], inputs["refined_teacher_probs"], inputs["self_labels"], w)
    assert method.loss(inputs)[0].item() == pytest.approx(expected.item())
    assert method.attack.target(inputs) is inputs["teacher_probs"]  # x^ against p_T(x), not p_T(x~)
    base = M.get_method(M.MethodSettings(reweighting="beta", guidance="teacher", beta=0.3))
    assert base.needs == {"teacher_probs", "adv_logits", "self_labels", "progress"}
    inputs["progress"] = 0.0
    expected, _ = M.w2s_loss(inputs["adv_logits"], inputs["teacher_probs"], inputs["self_labels"], 0.3)
    assert base.loss(inputs)[0].item() == pytest.approx(expected.item())


def test_vanilla_w2s_by_hand_with_beta_warmup():
    method = M.get_method(M.MethodSettings(name="vanilla-w2s", beta=0.5, beta_warmup=0.1))
    assert method.attack is None
    inputs = {"clean_logits": torch.tensor([[LN3, 0.0]]), "teacher_probs": torch.tensor([[0.2, 0.8]]),
              "self_labels": torch.tensor([0])}
    guided, self_ce = -(0.2 * math.log(0.75) + 0.8 * math.log(0.25)), -math.log(0.75)
    for progress, beta in ((0.05, 0.25), (0.5, 0.5)):
        loss, _ = method.loss({**inputs, "progress": progress})
        assert loss.item() == pytest.approx((1 - beta) * guided + beta * self_ce, rel=1e-6)


def test_tecoa_pmg_aft_fare_agft_by_hand():
    loss, _ = M.tecoa_loss(torch.tensor([[0.0, 0.0], [LN3, 0.0]]), torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((LN2 + math.log(4 / 3)) / 2, rel=1e-6)

    clean = torch.tensor([[LN3, 0.0]], requires_grad=True)
    loss, terms = M.pmg_aft_loss(torch.tensor([[0.0, 0.0]]), clean, torch.tensor([[0.0, LN3]]), torch.tensor([0]))
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)  # KL([.25,.75]||[.5,.5]) = KL([.75,.25]||[.5,.5])
    assert loss.item() == pytest.approx(LN2 + 2 * kl, rel=1e-5)
    loss.backward()
    assert clean.grad.abs().sum() > 0  # the clean-consistency term trains the clean output too

    loss, _ = M.fare_loss(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    assert loss.item() == pytest.approx(15.0)

    method = M.get_method(M.MethodSettings(name="agft", agft_temperature=2.0))
    inputs = {"adv_logits": torch.tensor([[LN3, 0.0]]), "frozen_logits": torch.tensor([[0.0, LN3]])}
    target = method.attack.target(inputs)  # softmax(2 * [0, ln 3]) = [.1, .9]
    assert torch.allclose(target, torch.tensor([[0.1, 0.9]]))
    assert method.loss(inputs)[0].item() == pytest.approx(-(0.1 * math.log(0.75) + 0.9 * math.log(0.25)), rel=1e-6)


def test_only_tecoa_and_pmg_aft_declare_labels_and_unknown_names_list_the_valid_ones():
    with_labels = {name for name in M.METHODS
                   if "labels" in M.get_method(M.MethodSettings(name=name)).needs}
    assert with_labels == {"tecoa", "pmg-aft"}
    with pytest.raises(UserError, match="valid: adv-w2s, vanilla-w2s, tecoa, pmg-aft, fare, agft"):
        M.get_method(M.MethodSettings(name="adv_w2s"))


def test_fare_warmup_plan_switches_method_at_the_given_step():
    plan = M.Plan.build(M.MethodSettings(name="adv-w2s", fare_warmup_steps=2))
    assert [plan.at(step).name for step in range(4)] == ["fare", "fare", "adv-w2s", "adv-w2s"]
    assert "frozen_features" in plan.needs and "labels" not in plan.needs


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="unknown inputs"):
        M.Method("x", frozenset({"teacher_logits"}), lambda inputs: None)
    with pytest.raises(ValueError, match="declares no attack"):
        M.Method("x", frozenset({"adv_logits"}), lambda inputs: None)
