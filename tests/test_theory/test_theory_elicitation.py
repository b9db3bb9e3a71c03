"""Feature elicitation (Awano and Suzuki): the subspaces' geometry and the retention measure."""
import math

import pytest
import torch

from robust_w2s.theory.feature_elicitation import FeatureElicitationConfig, link, off_target_capability, subspaces


def test_subspaces_have_the_configured_correlation(single_thread):
    config = FeatureElicitationConfig(d=20, K=4)
    theta, bases = subspaces(config, 0.6, torch.Generator().manual_seed(0))
    assert bases.shape == (4, 2, 20) and torch.allclose(bases[0, 0], theta)
    assert torch.allclose(bases.norm(dim=2), torch.ones(4, 2), atol=1e-6)
    assert torch.allclose(bases[1:, 0] @ theta, torch.full((3,), 0.6), atol=1e-6)   # <phi_k, theta> = c
    assert torch.allclose(bases[1:, 1] @ theta, torch.zeros(3), atol=1e-6)           # b_k is off the target
    private = bases[1:, 0] - 0.6 * theta
    assert torch.allclose(private @ private.T, 0.64 * torch.eye(3), atol=1e-6)        # and the rest are orthogonal


def test_link_is_increasing_convex_and_centred():
    z = torch.linspace(-3, 3, 61)
    values = link(z, 0.5)
    assert (values.diff() > 0).all() and (values.diff().diff() > 0).all()
    gaussian = torch.randn(400000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert link(gaussian, 0.5).mean().item() == pytest.approx(0.0, abs=0.01)


def test_retention_drops_when_off_target_neurons_turn_to_the_target(single_thread):
    config = FeatureElicitationConfig(d=20, K=3, N=8)
    generator = torch.Generator().manual_seed(1)
    theta, bases = subspaces(config, 0.3, generator)
    W = torch.einsum("kne,ked->knd", torch.randn(3, 8, 2, generator=generator), bases).reshape(-1, 20)
    X = torch.randn(4000, 20, generator=generator)
    kept = off_target_capability(W, bases, X)
    assert kept > 0.95                            # relu features of V_k express <phi_k, x>
    turned = W.clone()
    turned[8:] = theta * W[8:].norm(dim=1, keepdim=True)
    assert off_target_capability(turned, bases, X) < 0.3 ** 2 + 0.05   # only the shared c^2 part is left
    assert math.isclose(off_target_capability(W, bases, X), kept)
