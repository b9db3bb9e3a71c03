"""Training goes downhill. For every method, a few optimizer steps (the loop's own ``train_step``)
on one fixed batch lower that method's own loss, measured before and after with the same attack
randomness; and TeCoA raises PGD accuracy on the images it trains on. A loop that ascended, negated
or dropped the loss passes the resume and DDP equalities (both runs equally wrong) but fails here.

The tiny world's CLIPs are barely pretrained and score every class almost alike (logits within
~0.05 of each other), so two methods would start at their own optimum: FARE's and AGFT's targets
come from the frozen start S0, which equals the student. The student therefore starts from its
weights plus seeded noise (S != S0), and AGFT's soft target is sharpened (r = 50)."""
import pytest
import torch
from torch.utils.data import DataLoader

from robust_w2s.align import METHODS, Plan
from robust_w2s.align.inputs import Batch, StepInputs
from robust_w2s.align.loop import train_step
from robust_w2s.align.setup import Dist, prepare
from robust_w2s.attacks import evaluation_pgd
from robust_w2s.layout import read_world
from robust_w2s.zeroshot import accuracy

CPU = Dist(0, 1, torch.device("cpu"))
STEPS = 6
START_NOISE = 0.02  # std of the noise added to the student's image tower before training


def _session(world_home, tiny_config, name: str, batch_size: int = 16, noise: float = START_NOISE):
    config = tiny_config(f"method.name={name}", "optim.lr=1e-3", "optim.warmup_steps=0", "method.agft_temperature=50",
                         f"train.batch_size={batch_size}", f"train.steps={STEPS}")
    plan = Plan.build(config.method)
    session = prepare(config, plan, CPU, world=read_world(world_home), home=world_home)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in session.optimization.model.visual.parameters():
            parameter.add_(noise * torch.randn(parameter.shape, generator=generator))
    items = next(iter(DataLoader(session.view, batch_size=batch_size)))  # the first images, always the same
    return session, plan.at(0), Batch.from_loader(items, session.models, CPU.device)


def _own_loss(session, method, batch) -> float:
    """The method's loss on ``batch``, its attacks seeded alike at every measurement."""
    session.generators["attack"].manual_seed(11)
    session.generators["refine"].manual_seed(12)
    loss, _ = method.loss(StepInputs(method, batch, session.models, 0.5))  # vanilla W2S's beta is warm
    return loss.item()


def _train(session, method, batch) -> None:
    for step in range(STEPS):
        train_step(method, batch, session.models, session.optimization, step=step, steps=STEPS, bf16=False)


@pytest.mark.parametrize("name", list(METHODS))
def test_steps_on_a_fixed_batch_lower_the_methods_own_loss(world_home, tiny_config, name):
    session, method, batch = _session(world_home, tiny_config, name)
    before = _own_loss(session, method, batch)
    _train(session, method, batch)
    after = _own_loss(session, method, batch)
    assert after < 0.98 * before, (before, after)


def test_the_check_notices_a_loop_that_climbs_the_loss(world_home, tiny_config):
    """Control: the same measurement on a step that ascends (the loss negated) sees the loss rise."""
    session, method, batch = _session(world_home, tiny_config, "tecoa")  # fixed labels: a fixed objective
    negated = type(method)(method.name, method.needs, lambda inputs: (-method.loss(inputs)[0], {}), method.attack)
    before = _own_loss(session, method, batch)
    _train(session, negated, batch)
    assert _own_loss(session, method, batch) > before


def test_tecoa_raises_pgd_accuracy_on_its_training_images(world_home, tiny_config):
    session, method, batch = _session(world_home, tiny_config, "tecoa", batch_size=32, noise=0.0)
    student, eps = session.models.student_plain, session.models.attack["eps"]

    def pgd_accuracy() -> float:
        attack = evaluation_pgd(eps=eps, steps=10, generator=torch.Generator().manual_seed(0))
        return accuracy(student, [(batch.images, batch.labels)], attack=attack)[0]

    before = pgd_accuracy()
    _train(session, method, batch)
    after = pgd_accuracy()
    assert after >= before + 0.1, (before, after)
