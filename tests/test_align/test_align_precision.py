"""attack.precision reaches every training attack; the teacher's two targets share one precision;
activation checkpointing changes memory, not gradients."""
import pytest
import torch
from torch.utils.data import DataLoader

from robust_w2s.align import METHODS, Plan
from robust_w2s.align.inputs import Batch, StepInputs
from robust_w2s.align.setup import Dist, prepare, resolve_precision
from robust_w2s.errors import UserError
from robust_w2s.layout import read_world

CPU = Dist(0, 1, torch.device("cpu"))


def _session(world_home, tiny_config, *overrides: str):
    config = tiny_config(*overrides)
    plan = Plan.build(config.method)
    session = prepare(config, plan, CPU, world=read_world(world_home), home=world_home)
    items = next(iter(DataLoader(session.view, batch_size=8)))
    return session, plan.at(0), Batch.from_loader(items, session.models, CPU.device)


def _record_image_towers(session) -> list[tuple[str, bool, torch.dtype | None]]:
    """(tower, input needs a gradient, autocast dtype or None) of every image-tower forward from now on.
    An input that needs a gradient marks an attack's pass: the update's own passes see detached images."""
    seen = []
    towers = {"student": session.models.student_plain.classifier.model.visual}
    if session.models.teacher is not None:
        towers["teacher"] = session.models.teacher.model.visual
    for name, tower in towers.items():
        def hook(module, args, name=name):
            on = torch.is_autocast_enabled("cpu")
            seen.append((name, args[0].requires_grad, torch.get_autocast_dtype("cpu") if on else None))
        tower.register_forward_pre_hook(hook)
    return seen


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("name", [name for name in METHODS if name != "vanilla-w2s"])  # vanilla: no attack
def test_attack_precision_reaches_every_training_attack(world_home, tiny_config, name, precision):
    session, method, batch = _session(world_home, tiny_config, f"method.name={name}",
                                      f"attack.precision={precision}", "attack.steps=2", "attack.refine_steps=1")
    seen = _record_image_towers(session)
    inputs = StepInputs(method, batch, session.models, 0.0)
    for key in method.needs:  # every declared input, attacks included, outside any autocast
        inputs[key]
    attack_passes = [(tower, dtype) for tower, needs_grad, dtype in seen if needs_grad]
    expected = {"student": 2} | ({"teacher": 1} if "refined_teacher_probs" in method.needs else {})
    assert {tower: sum(t == tower for t, _ in attack_passes) for tower in expected} == expected
    assert all(dtype == (torch.bfloat16 if precision == "bf16" else None) for _, dtype in attack_passes)


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_cpu_and_unknown_values_are_user_errors():
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(UserError, match="unknown attack.precision 'bf61'; did you mean bf16"):
        resolve_precision("bf61", torch.device("cpu"))


def test_iar_target_and_cached_target_are_computed_at_one_precision(world_home, tiny_config):
    """With a refinement that does not move x (no step, no start noise), p_T(x~) is the cached p_T(x)
    bit for bit, even under the update's bf16 autocast, which a bf16 IAR target would not match."""
    session, method, batch = _session(world_home, tiny_config, "attack.refine_steps=0", "attack.start_noise_std=0")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        refined = StepInputs(method, batch, session.models, 0.0)["refined_teacher_probs"]
    assert refined.dtype == torch.float32 and torch.equal(refined, batch.cached["teacher_probs"])


def test_activation_checkpointing_recomputes_the_tower_and_leaves_gradients_unchanged(world_home, tiny_config):
    gradients, block_calls = [], []
    for checkpointing in (False, True):
        session, method, batch = _session(world_home, tiny_config, "method.name=tecoa",
                                          f"train.grad_checkpointing={str(checkpointing).lower()}")
        visual = session.optimization.model.visual
        block, calls = visual.transformer.resblocks[0], []
        forward = block.forward  # wrapped, not hooked: a checkpoint's recomputation skips module hooks
        block.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
        session.generators["attack"].manual_seed(0)
        loss, _ = method.loss(StepInputs(method, batch, session.models, 0.0))
        calls.clear()  # count the update's passes only: its forward and its backward
        loss.backward()
        block_calls.append(len(calls))
        gradients.append({k: p.grad.clone() for k, p in visual.named_parameters() if p.grad is not None})
    assert block_calls == [0, 1]  # checkpointing recomputes the block's forward in backward
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    assert all(torch.equal(gradients[0][k], gradients[1][k]) for k in gradients[0])  # the same arithmetic
