
import datasets
import numpy as np
import pytest
import torch
from torch import nn

from robust_w2s.eval import runner
from robust_w2s.eval.registry import Benchmark
from robust_w2s.eval.runner import EvalSettings, evaluate_benchmark
from torchvision.transforms import ToTensor

N_CLASSES = 4


class Linear(nn.Module):
    """A linear classifier on 8x8 images whose class k prefers brightness pattern k."""

    def __init__(self, masked: bool = False, scale: float = 20.0):
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3 * 8 * 8, N_CLASSES))
        self.masked = masked
        self.scale = scale  # the logit scale: large enough, fp32 softmax saturates

    def forward(self, pixels):
        if self.masked:  # quantizing the input has zero gradient almost everywhere
            pixels = torch.round(pixels * 4) / 4
        return self.scale * pixels.flatten(1) @ self.weight / 8


def _dataset(model, n=48):
    """Images the model classifies confidently, labelled with its own prediction."""
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(n, 3, 8, 8, generator=generator)
    with torch.no_grad():
        labels = model(pixels).argmax(1)
    images = [(p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for p in pixels]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=N_CLASSES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)


BENCHMARK = Benchmark("toy", "local:/nowhere", "test", tuple(f"c{k}" for k in range(N_CLASSES)), ("a {}.",))


def _run(model, attacks=("pgd", "apgd"), eps=(1 / 255, 8 / 255)):
    """The runner on 48 toy images the sound Linear() labels, in batches of 16."""
    settings = EvalSettings(attacks=attacks, eps=eps, pgd_steps=10, batch_size=16, audit_samples=32)
    return evaluate_benchmark(model, _dataset(Linear()), BENCHMARK, transform=ToTensor(), settings=settings)


def _audits(result):
    return {name: audit["passed"] for row in result["rows"] for name, audit in row["audits"].items()}


def test_sound_model_passes_every_audit_and_loses_accuracy():
    result = _run(Linear())
    assert all(_audits(result).values()), _audits(result)
    assert result["clean_acc"] > 0.9  # labels are the clean predictions, up to uint8 rounding
    worst = {row["eps"]: row["worst_case_acc"] for row in result["rows"]}
    assert worst[8 / 255] < worst[1 / 255] <= result["clean_acc"]


def test_worst_case_is_at_most_every_single_attack():
    for row in _run(Linear())["rows"]:
        assert row["worst_case_acc"] <= row["robust_acc"] + 1e-12


def test_masked_gradients_are_flagged():
    result = _run(Linear(masked=True), attacks=("pgd",), eps=(1 / 255,))
    flags = _audits(result)
    assert not flags["nonzero_gradients"]
    assert not flags["large_eps_breaks"], "a masked model keeps its accuracy at 32/255"


# Fake attacks with chosen successes, patched in for the runner's `_attack`.
FAR, FARTHER = 40 / 255, 48 / 255  # radii at which the exact attack breaks every toy image (not 32/255:
# that is the large-eps audit's radius, where these fakes break every image)


def _identity(pixels):
    """Per image, a label in {0, 1, 2} the fake attacks choose their targets by (byte sum mod 3)."""
    return torch.round(pixels.flatten(1).sum(1) * 255).long() % 3


def _exact_attack(model, images, labels, eps):
    """The exact worst case over the Linf ball and [0, 1] for the Linear model: per wrong class j,
    every pixel goes to the end of its interval that lowers logit_y - logit_j; the best j is kept."""
    flat, best = images.flatten(1), images.clone()
    best_margin = torch.full((len(images),), float("inf"))
    for j in range(N_CLASSES):
        lowers = (model.weight[:, labels].T - model.weight[:, j]) > 0
        candidate = torch.where(lowers, (flat - eps).clamp(0, 1), (flat + eps).clamp(0, 1)).view_as(images)
        with torch.no_grad():
            logits = model(candidate)
        margin = torch.where(labels == j, float("inf"), logits.gather(1, labels[:, None]).squeeze(1) - logits[:, j])
        best[margin < best_margin] = candidate[margin < best_margin]
        best_margin = torch.minimum(best_margin, margin)
    return best


def _partial_attack(breaks):
    """A sound attack that breaks only the images ``breaks(name, eps, identity)`` picks: the exact
    adversarial image there, the clean one elsewhere. Claims nothing (like PGD)."""
    def attack(name, classifier, pixels, labels, *, eps, **_):
        chosen = breaks(name, eps, _identity(pixels))[:, None, None, None]
        return torch.where(chosen, _exact_attack(classifier, pixels, labels, eps), pixels), None
    return attack


def test_sound_attacks_that_disagree_per_sample_and_per_radius_pass_every_audit(monkeypatch):
    targets = {("pgd", FAR): 0, ("apgd", FAR): 1, ("pgd", FARTHER): 1, ("apgd", FARTHER): 2}
    # At the large-eps audit's 32/255 (not in ``targets``) each breaks every image, as a sound attack does.
    monkeypatch.setattr("robust_w2s.eval.runner._attack", _partial_attack(
        lambda name, eps, identity: identity == targets[name, eps] if (name, eps) in targets else identity >= 0))
    model = Linear()
    dataset = _dataset(model)
    pixels = torch.stack([ToTensor()(image) for image in dataset["image"]])
    labels = torch.tensor(dataset["label"])
    assert (model(_exact_attack(model, pixels, labels, FAR)).argmax(1) != labels).all(), "precondition"
    identity = _identity(pixels)
    result = _run(model, eps=(FAR, FARTHER))
    assert all(_audits(result).values()), _audits(result)
    assert result["clean_acc"] == 1.0
    rows = {(row["attack"], row["eps"]): row for row in result["rows"]}
    for key, target in targets.items():  # each attack's own number
        assert rows[key]["robust_acc"] == pytest.approx((identity != target).float().mean().item())
    # Worst case at FAR: neither attack's target; at FARTHER, also not FAR's: nothing is left.
    assert rows["pgd", FAR]["worst_case_acc"] == pytest.approx((identity == 2).float().mean().item())
    assert rows["pgd", FARTHER]["worst_case_acc"] == 0.0
    kept = int((identity == 0).sum())  # every attack at FARTHER kept these; PGD at FAR broke them
    audit = rows["pgd", FAR]["audits"]
    assert f"apgd left {kept} robust that pgd broke" in audit["nested"]["detail"]
    assert f"{kept} kept by every attack at 48/255 but broken at a smaller radius" in audit["monotone_in_eps"]["detail"]


def test_out_of_ball_attack_fails_the_threat_model_audit(monkeypatch):
    def beyond(name, classifier, pixels, labels, *, eps, **_):
        return (pixels + 2 * eps * torch.where(pixels < 0.5, 1.0, -1.0)).clamp(0, 1), None
    monkeypatch.setattr("robust_w2s.eval.runner._attack", beyond)
    result = _run(Linear(), attacks=("pgd",), eps=(8 / 255,))
    assert not _audits(result)["in_threat_model"]


def test_claimed_success_without_an_adversarial_image_cannot_lower_a_number(monkeypatch):
    real_attack = runner._attack

    def liar(name, classifier, pixels, labels, **kwargs):
        if name == "pgd":
            return real_attack(name, classifier, pixels, labels, **kwargs)
        return pixels.clone(), torch.zeros(len(labels), dtype=torch.bool)  # "every sample broken"
    monkeypatch.setattr("robust_w2s.eval.runner._attack", liar)
    result = _run(Linear(), eps=(8 / 255,))
    rows = {row["attack"]: row for row in result["rows"]}
    assert rows["apgd"]["robust_acc"] == result["clean_acc"]
    assert rows["apgd"]["worst_case_acc"] == rows["pgd"]["robust_acc"] < result["clean_acc"]
    clean_correct = round(result["clean_acc"] * result["n_samples"])
    assert f"apgd: {clean_correct} claimed successes not confirmed" in rows["apgd"]["audits"]["nested"]["detail"]
    # the attack that does nothing fails its own large-eps audit; PGD's row, which works, passes it
    assert not rows["apgd"]["audits"]["large_eps_breaks"]["passed"]
    assert rows["pgd"]["audits"]["large_eps_breaks"]["passed"]


def test_cascade_attacks_only_what_earlier_attacks_left_robust(monkeypatch):
    import robust_w2s.eval.runner as runner
    attacked = []
    real_attack = runner._attack

    def counting(name, classifier, pixels, labels, **keywords):
        attacked.append((name, len(labels)))
        return real_attack(name, classifier, pixels, labels, **keywords)

    monkeypatch.setattr(runner, "_attack", counting)
    settings = EvalSettings(attacks=("pgd", "apgd-ce"), eps=(2 / 255,), pgd_steps=3, batch_size=48, audit_samples=4,
                            cascade=True)
    result = evaluate_benchmark(Linear(), _dataset(Linear()), BENCHMARK, transform=ToTensor(), settings=settings)
    rows = {row["attack"]: row for row in result["rows"]}
    survivors = round(rows["pgd"]["robust_acc"] * 48)
    assert 0 < survivors < 48  # PGD-3 at 2/255 breaks some of these images, not all
    assert attacked[:2] == [("pgd", 48), ("apgd-ce", survivors)]  # APGD-CE saw only PGD's survivors
    # its row is the worst case of both, and never above PGD's
    assert rows["apgd-ce"]["robust_acc"] == rows["apgd-ce"]["worst_case_acc"] <= rows["pgd"]["robust_acc"]
    assert all(_audits(result).values())
