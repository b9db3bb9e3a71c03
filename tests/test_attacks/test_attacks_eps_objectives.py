"""parse_eps, the summed objectives and the name registries."""

import pytest
import torch

from robust_w2s.attacks import OBJECTIVES, VERSIONS, cross_entropy, feature_distance, kl_divergence, parse_eps


@pytest.mark.parametrize(
    "value, expected",
    [("4/255", 4 / 255), ("0.01", 0.01), (" 2 / 255 ", 2 / 255), ("1e-3", 1e-3),
     (0, 0.0), (1, 1.0), (0.5, 0.5), ("0", 0.0)],
)
def test_parse_eps_accepts_numbers_and_fractions(value, expected):
    assert parse_eps(value) == expected


@pytest.mark.parametrize(
    "value", ["4/0", "abc", "", "1/2/3", "-0.1", "-1/255", "1.5", "300/255", "nan", "inf", -0.1,
              2, True, None, [4, 255]],
)
def test_parse_eps_rejects_bad_values_with_one_line_message(value):
    with pytest.raises(ValueError) as info:
        parse_eps(value)
    message = str(info.value)
    assert "\n" not in message and repr(value) in message


def test_parse_eps_upper_bound_can_be_lifted_for_l2():
    assert parse_eps("3/1", upper=None) == 3.0
    with pytest.raises(ValueError):
        parse_eps(3.0)


def _logits_and_targets(batch=5, classes=4):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=generator) * 3
    labels = torch.randint(classes, (batch,), generator=generator)
    probs = torch.softmax(torch.randn(batch, classes, generator=generator), dim=1)
    return logits, labels, probs


def test_cross_entropy_matches_definition_for_labels_and_soft_targets():
    logits, labels, probs = _logits_and_targets()
    log_p = torch.log_softmax(logits, dim=1)
    assert torch.allclose(cross_entropy(logits, labels), -log_p[torch.arange(5), labels].sum())
    assert torch.allclose(cross_entropy(logits, probs), -(probs * log_p).sum())
    one_hot = torch.nn.functional.one_hot(labels, 4).float()
    assert torch.allclose(cross_entropy(logits, one_hot), cross_entropy(logits, labels))


def test_kl_divergence_matches_definition_and_handles_zero_probabilities():
    logits, _, probs = _logits_and_targets()
    log_p = torch.log_softmax(logits, dim=1)
    expected = (probs * (probs.log() - log_p)).sum()
    assert torch.allclose(kl_divergence(logits, probs), expected)
    one_hot = torch.nn.functional.one_hot(torch.tensor([1, 2]), 4).float()
    assert torch.isfinite(kl_divergence(logits[:2], one_hot))
    assert kl_divergence(log_p, log_p.exp()).abs() < 1e-5


def test_feature_distance_is_summed_squared_l2():
    a, b = torch.randn(3, 7), torch.randn(3, 7)
    assert torch.allclose(feature_distance(a, b), ((a - b) ** 2).sum())


@pytest.mark.parametrize("name", ["ce", "kl", "l2"])
def test_objectives_are_summed_not_averaged(name):
    # A mean-reduced loss gives the same value on a duplicated batch; the sum doubles.
    logits, labels, probs = _logits_and_targets(batch=3)
    target = {"ce": labels, "kl": probs, "l2": probs}[name]
    objective = OBJECTIVES[name]
    single = objective(logits, target)
    doubled = objective(torch.cat([logits, logits]), torch.cat([target, target]))
    assert single.dim() == 0
    assert torch.allclose(doubled, 2 * single)


def test_registries_reject_unknown_names_listing_valid_ones():
    with pytest.raises(ValueError, match="'ce'.*'kl'.*'l2'"):
        OBJECTIVES["mse"]
    with pytest.raises(ValueError, match="'standard'.*'apgd'"):
        VERSIONS["plus"]
    assert VERSIONS["standard"] == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert VERSIONS["apgd"] == ("apgd-ce", "apgd-t")


def test_objectives_reject_mismatched_targets():
    with pytest.raises(ValueError):
        cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        kl_divergence(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError):
        feature_distance(torch.zeros(2, 3), torch.zeros(2))
