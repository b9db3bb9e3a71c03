"""The audits as invariants: sound evaluations (attacks and radii that disagree per sample, a
saturated softmax, an attack exactly at chance) pass; broken attacks or bookkeeping fail."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robust_w2s.eval import audits
from robust_w2s.eval.runner import worst_case

EPS1, EPS2 = 1 / 255, 2 / 255


def _mask(*bits):
    return torch.tensor([bool(b) for b in bits])


def test_nested_passes_attacks_that_disagree_and_reports_it():
    clean = _mask(1, 1, 1, 0)
    # PGD broke sample 1 that APGD missed and APGD broke sample 2 that PGD missed: sound attacks
    # from different starts do that.
    disagreeing = {"pgd": _mask(1, 0, 1, 0), "apgd": _mask(1, 1, 0, 0)}
    audit = audits.nested(clean, disagreeing)
    assert audit.passed, audit.detail
    assert "apgd left 1 robust that pgd broke" in audit.detail


def test_nested_fails_a_robust_mask_not_anded_with_clean_correct():
    clean = _mask(1, 1, 0)
    robust_but_wrong = {"pgd": _mask(1, 0, 1)}  # sample 2 is clean-wrong but counted robust
    audit = audits.nested(clean, robust_but_wrong)
    assert not audit.passed and "1 pgd-robust but clean-wrong" in audit.detail


def test_nested_reports_unconfirmed_claims_without_failing():
    clean = _mask(1, 1)
    audit = audits.nested(clean, {"apgd": _mask(1, 1)}, {"apgd": 2})
    assert audit.passed and "apgd: 2 claimed successes not confirmed" in audit.detail


# Two radii that disagree per sample: at EPS2 the attack keeps sample 1, which it broke at EPS1
# (an independent start at each radius), and breaks sample 2.
CLEAN = _mask(1, 1, 1, 1, 0)
DISAGREEING = {("pgd", EPS1): _mask(1, 0, 1, 1, 0), ("pgd", EPS2): _mask(1, 1, 0, 1, 0),
               ("apgd", EPS1): _mask(1, 1, 1, 0, 0), ("apgd", EPS2): _mask(1, 1, 1, 1, 0)}


def test_worst_case_counts_smaller_radii_and_every_attack():
    worst = worst_case(CLEAN, DISAGREEING)
    assert worst[EPS1].tolist() == [True, False, True, False, False]   # pgd broke 1, apgd broke 3
    assert worst[EPS2].tolist() == [True, False, False, False, False]  # and pgd broke 2 at EPS2


def test_monotone_passes_radii_that_disagree_with_sound_bookkeeping():
    audit = audits.monotone_in_eps(CLEAN, DISAGREEING, worst_case(CLEAN, DISAGREEING))
    assert audit.passed, audit.detail
    assert "2 kept by every attack at 2/255 but broken at a smaller radius" in audit.detail  # samples 1 and 3


def test_monotone_fails_worst_cases_computed_per_radius_alone():
    independent = {eps: CLEAN & DISAGREEING["pgd", eps] & DISAGREEING["apgd", eps] for eps in (EPS1, EPS2)}
    # The old bookkeeping: worst-case accuracy rises from 40% to 60%, samples 1 and 3 counted
    # robust at EPS2 after an attack broke them at EPS1.
    audit = audits.monotone_in_eps(CLEAN, DISAGREEING, independent)
    assert not audit.passed and "2 counted robust at 2/255" in audit.detail


def test_monotone_fails_a_worst_case_that_ignores_an_attack_or_clean_errors():
    worst = worst_case(CLEAN, DISAGREEING)
    without_apgd = worst_case(CLEAN, {key: mask for key, mask in DISAGREEING.items() if key[0] == "pgd"})
    assert not audits.monotone_in_eps(CLEAN, DISAGREEING, without_apgd).passed
    clean_wrong_counted = {eps: mask | _mask(0, 0, 0, 0, 1) for eps, mask in worst.items()}
    assert not audits.monotone_in_eps(CLEAN, DISAGREEING, clean_wrong_counted).passed
    too_pessimistic = {eps: torch.zeros_like(mask) for eps, mask in worst.items()}
    audit = audits.monotone_in_eps(CLEAN, DISAGREEING, too_pessimistic)
    assert not audit.passed and "counted broken at 1/255 that no attack" in audit.detail


def _pmf(n: int, p: float) -> np.ndarray:
    """Binomial pmf by convolving n Bernoulli(p) trials: a second route to the audit's tails."""
    pmf = np.array([1.0])
    for _ in range(n):
        pmf = np.convolve(pmf, [1 - p, p])
    return pmf


@pytest.mark.parametrize("n, n_classes", [(16, 2), (16, 4), (16, 8), (32, 4), (256, 10)])
def test_large_eps_false_alarm_at_chance_is_below_the_bound(n, n_classes):
    pmf = _pmf(n, 1 / n_classes)
    tails = np.cumsum(pmf[::-1])[::-1]
    assert np.allclose(audits.binomial_tails(n, 1 / n_classes), tails, rtol=1e-9, atol=1e-300)
    fails = np.array([not audits.large_eps_breaks(k, n, n_classes).passed for k in range(n + 1)])
    # An attack that leaves each image correct with probability chance: P(audit fails) exactly.
    assert pmf[fails].sum() < audits.FALSE_ALARM_BOUND
    # Every count at least 1e-6 likely at chance passes; the bound is not loose by more than one count.
    assert not fails[pmf >= audits.FALSE_ALARM_BOUND].any()
    if fails.any():
        critical = int(np.argmax(fails))
        assert fails[critical:].all() and tails[critical - 1] >= audits.FALSE_ALARM_BOUND


def test_large_eps_fails_an_attack_that_keeps_most_images():
    assert not audits.large_eps_breaks(14, 16, 8).passed  # a masked model keeps ~90%
    assert not audits.large_eps_breaks(25, 32, 4).passed
    assert audits.large_eps_breaks(0, 16, 8).passed


def test_large_eps_says_when_it_cannot_fail():
    audit = audits.large_eps_breaks(16, 16, 2)  # 2^-16 > 1e-6: even 16/16 is not extreme enough
    assert audit.passed and "cannot fail with 16 images" in audit.detail


class _Saturated(torch.nn.Module):
    """A smooth linear classifier with logit scale 1e4: confident far beyond fp32's softmax range."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(12, 3, generator=torch.Generator().manual_seed(0)))

    def forward(self, pixels):
        return 1e4 * pixels.flatten(1) @ self.weight


def test_saturated_softmax_passes_the_gradient_audit_where_cross_entropy_is_flat():
    model = _Saturated()
    pixels = torch.rand(32, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    labels = model(pixels).argmax(1)
    pixels.requires_grad_(True)
    (ce_gradient,) = torch.autograd.grad(F.cross_entropy(model(pixels), labels, reduction="sum"), pixels)
    flat = ce_gradient.flatten(1).abs().amax(1) == 0
    assert flat.float().mean() > 0.5, "the model must saturate fp32's softmax for this test to mean anything"
    mask = audits.nonzero_gradient_mask(model, pixels, labels)
    assert mask.all()
    assert audits.nonzero_gradients(mask.float().mean().item()).passed


def test_margin_is_true_logit_minus_best_other():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    assert audits.margin(logits, torch.tensor([0, 2])).tolist() == [1.0, -6.0]


def test_threat_model_audit_bounds():
    assert audits.in_threat_model(0.0, 0.0, 1.0, 4 / 255).passed
    assert not audits.in_threat_model(1e-3, 0.0, 1.0, 4 / 255).passed
    assert not audits.in_threat_model(0.0, -0.01, 1.0, 4 / 255).passed
