"""The weak-to-strong hooks beyond one teacher: RAVEN's learned weights, graph smoothing, P(IK),
each against values worked out by hand, and composed in short runs."""
import json
import math

import datasets
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from robust_w2s.align import methods as M
from robust_w2s.align import state
from robust_w2s.align.config import load_config
from robust_w2s.align.guidance import (SIMPLEX_FLOOR, TeacherMixture, knn_graph, label_propagation,
                                       train_knows)
from robust_w2s.align.loop import train
from robust_w2s.align.setup import alignment_data
from robust_w2s.checkpoints import WEIGHTS_FILE, read_checkpoint_config
from robust_w2s.errors import UserError
from robust_w2s.layout import model_spec

LN3 = math.log(3)


def _raven_inputs(mixture, progress=0.5):
    # Student p_S = [.75, .25] on both samples; teacher 0 agrees with it, teacher 1 says the opposite.
    return {"clean_logits": torch.tensor([[LN3, 0.0], [LN3, 0.0]]), "self_labels": torch.tensor([0, 0]),
            "teachers_probs": torch.tensor([[[0.9, 0.1], [0.1, 0.9]], [[0.9, 0.1], [0.1, 0.9]]]),
            "teacher_weights": mixture.weights, "progress": progress}


def test_raven_step_by_hand_moves_weight_to_the_teacher_the_student_agrees_with():
    method = M.get_method(M.MethodSettings(name="vanilla-w2s", guidance="raven", reweighting="beta", beta=0.5,
                                           raven=M.RavenSettings(lr=0.1, freeze=0.2, agreement=0.0)))
    assert method.needs == {"clean_logits", "self_labels", "teachers_probs", "teacher_weights", "progress"}
    mixture = TeacherMixture(2, lr=0.1, freeze=0.2)
    loss, terms = method.loss(_raven_inputs(mixture))
    loss.backward()
    # d loss / d w_t = (1 - beta) CE(p_S, p_Tt): -(.9 ln .75 + .1 ln .25) and -(.1 ln .75 + .9 ln .25)
    ce = torch.tensor([-(0.9 * math.log(0.75) + 0.1 * math.log(0.25)),
                       -(0.1 * math.log(0.75) + 0.9 * math.log(0.25))])
    assert torch.allclose(mixture.weights.grad, 0.5 * ce, atol=1e-6)
    assert terms["teacher_weight_0"].item() == pytest.approx(0.5)
    mixture.step(progress=0.1)  # frozen for the first fifth: unchanged, gradient dropped
    assert torch.equal(mixture.weights.detach(), torch.tensor([0.5, 0.5])) and mixture.weights.grad is None
    method.loss(_raven_inputs(mixture))[0].backward()
    mixture.step(progress=0.5)
    expected = torch.tensor([0.5, 0.5]) - 0.1 * 0.5 * ce
    assert torch.allclose(mixture.weights.detach(), expected / expected.sum(), atol=1e-6)
    assert mixture.weights[0] > 0.5
    for _ in range(200):  # the weights go to the teacher the student agrees with, never below the floor
        method.loss(_raven_inputs(mixture))[0].backward()
        mixture.step(progress=0.5)
    assert SIMPLEX_FLOOR <= mixture.weights[1].item() < 1.1 * SIMPLEX_FLOOR  # clamped, then renormalized
    assert mixture.weights.sum().item() == pytest.approx(1.0)
    assert not mixture.collapse_reported  # one weight at the floor is learning, not a collapse


def test_raven_step_that_floors_every_weight_is_reported_once(caplog):
    """lr so large that both weights go below the floor: they come back uniform (as in RAVEN's code),
    and the run says so once, instead of silently training on a plain average."""
    method = M.get_method(M.MethodSettings(name="vanilla-w2s", guidance="raven", reweighting="beta", beta=0.5,
                                           raven=M.RavenSettings(lr=100.0, freeze=0.0, agreement=0.0)))
    mixture = TeacherMixture(2, lr=100.0, freeze=0.0)
    for _ in range(3):
        method.loss(_raven_inputs(mixture))[0].backward()
        mixture.step(progress=0.5)
    assert torch.allclose(mixture.weights.detach(), torch.tensor([0.5, 0.5]))
    reports = [r for r in caplog.records if "took every teacher weight to the floor" in r.getMessage()]
    assert len(reports) == 1 and "method.raven.lr=100" in reports[0].getMessage()


def test_raven_agreement_schedule_ignores_samples_the_teachers_disagree_on_early_only():
    method = M.get_method(M.MethodSettings(name="vanilla-w2s", guidance="raven", reweighting="beta", beta=0.0,
                                           raven=M.RavenSettings(agreement=0.3)))
    mixture = TeacherMixture(2, lr=0.1, freeze=0.0)
    inputs = _raven_inputs(mixture)
    inputs["teachers_probs"] = torch.tensor([[[0.9, 0.1], [0.8, 0.2]],    # both say class 0: kept early
                                             [[0.9, 0.1], [0.1, 0.9]]])   # they disagree: ignored early
    combined = M.raven_combination(inputs["teachers_probs"], mixture.weights.detach())
    per_sample = -(combined * torch.log(torch.tensor([0.75, 0.25]))).sum(dim=1)
    early, _ = method.loss({**inputs, "progress": 0.1})
    late, _ = method.loss({**inputs, "progress": 0.5})
    assert early.item() == pytest.approx(per_sample[0].item(), rel=1e-6)
    assert late.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)


def test_knn_graph_and_label_propagation_on_a_path_solved_by_hand():
    # Three unit vectors at 0, 40 and 80 degrees: with k = 1 the symmetric graph is the path 0 - 1 - 2.
    angles = torch.deg2rad(torch.tensor([0.0, 40.0, 80.0]))
    graph = knn_graph(torch.stack([angles.cos(), angles.sin()], dim=1), neighbours=1).to_dense()
    r = 1 / math.sqrt(2)  # S = D^-1/2 W D^-1/2 with degrees (1, 2, 1)
    assert torch.allclose(graph, torch.tensor([[0, r, 0], [r, 0, r], [0, r, 0]]), atol=1e-6)
    seed = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    one = label_propagation(graph, seed, alpha=0.5, iterations=1)
    row0 = torch.tensor([0.5 * r * 0.5 + 0.5, 0.5 * r * 0.5])  # alpha S Y + (1 - alpha) Y, row 0
    assert torch.allclose(one[0], row0 / row0.sum(), atol=1e-6)
    # Many iterations reach the fixed point (1 - alpha)(I - alpha S)^-1 Y, rows renormalized.
    fixed = 0.5 * torch.linalg.solve(torch.eye(3) - 0.5 * graph, seed)
    converged = label_propagation(graph, seed, alpha=0.5, iterations=200)
    assert torch.allclose(converged, fixed / fixed.sum(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(label_propagation(graph, seed, alpha=0.0, iterations=5), seed)
    with pytest.raises(ValueError, match="neighbours"):
        knn_graph(torch.randn(3, 2), neighbours=3)


def test_pik_learns_where_the_student_knows_and_reports_held_out_precision_and_recall():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(200, 8, generator=generator)
    knows = embeddings[:, 0] > 0  # separable: the student knows exactly where feature 0 is positive
    classifier, stats = train_knows(embeddings, knows, holdout=0.25, seed=0)
    assert (stats["n_labels"], stats["n_train"], stats["n_holdout"]) == (200, 150, 50)
    assert stats["precision"] > 0.8 and stats["recall"] > 0.8
    assert ((classifier(embeddings) > 0.5) == knows).float().mean() > 0.9
    again, _ = train_knows(embeddings, knows, holdout=0.25, seed=0)
    assert torch.equal(again.linear.weight, classifier.linear.weight)  # deterministic for a seed
    # The held-out figures are at the configured threshold: at 0.99 it calls fewer images known.
    _, strict = train_knows(embeddings, knows, holdout=0.25, seed=0, threshold=0.99)
    assert strict["predicted_known_rate"] < stats["predicted_known_rate"] and strict["recall"] < stats["recall"]
    with pytest.raises(UserError, match="leave 0 to fit"):
        train_knows(embeddings[:2], knows[:2], holdout=0.9, seed=0)


def _corrupt_outside(tmp_path, keep: set[int], n=40):
    """An alignment set whose labels are valid only on rows ``keep``: elsewhere out of range."""
    images = [Image.new("RGB", (32, 32), (6 * i, 0, 0)) for i in range(n)]
    labels = [i % 3 if i in keep else 99 for i in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(tmp_path / "d"))
    return f"local:{tmp_path / 'd'}"


def test_pik_reads_only_its_declared_labels(tmp_path, world_home):
    settings = ["method.name=vanilla-w2s", "method.reweighting=pik", "method.pik.labels=8", "train.seed=3",
                "data.classnames=[a,b,c]"]
    probe = load_config(None, ["data.dataset=local:/nowhere", *settings])
    rows = torch.randperm(40, generator=torch.Generator().manual_seed(probe.train.seed))[:8]
    spec = _corrupt_outside(tmp_path, set(rows.tolist()))
    config = load_config(None, [f"data.dataset={spec}", *settings])
    dataset, _, _, labels, known = alignment_data(config, M.Plan.build(config.method), None, world_home)
    assert labels is None and dataset.column_names == ["image"]  # the training data has no labels
    assert torch.equal(known[0], rows) and known[1].tolist() == [i % 3 for i in rows.tolist()]
    # One more label than declared would reach a corrupt one: the subset is exactly what it reads.
    wider = load_config(None, [f"data.dataset={spec}", *settings[:2], "method.pik.labels=9", *settings[3:]])
    with pytest.raises(UserError, match="99"):
        alignment_data(wider, M.Plan.build(wider.method), None, world_home)


@pytest.mark.parametrize("outside", [None, "zzz"])
def test_label_free_methods_read_no_string_label_outside_the_pik_subset(tmp_path, world_home, outside):
    """String labels valid only on P(IK)'s rows (elsewhere missing or an extra class): neither P(IK)
    nor a method without labels reads them, so neither the class names nor the run change."""
    n, settings = 40, ["method.name=vanilla-w2s", "method.pik.labels=8", "train.seed=3", "data.classnames=[a,b,c]"]
    rows = set(torch.randperm(n, generator=torch.Generator().manual_seed(3))[:8].tolist())
    images = [Image.new("RGB", (32, 32), (6 * i, 0, 0)) for i in range(n)]
    labels = ["abc"[i % 3] if i in rows else outside for i in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(tmp_path / "d"))
    spec = f"data.dataset=local:{tmp_path / 'd'}"
    for reweighting in ("pik", "beta"):
        config = load_config(None, [spec, f"method.reweighting={reweighting}", *settings])
        _, classnames, _, _, known = alignment_data(config, M.Plan.build(config.method), None, world_home)
        assert classnames == ["a", "b", "c"]
        assert (known is None) == (reweighting == "beta")
    # Without data.classnames the names would have to come from the labels: refused, not read.
    unnamed = load_config(None, [spec, "method.reweighting=beta", *settings[:3]])
    with pytest.raises(UserError, match="data.classnames"):
        alignment_data(unnamed, M.Plan.build(unnamed.method), None, world_home)


def test_raven_with_eur_on_adversarial_inputs_runs_logs_weights_and_resumes_exactly(world_home, tiny_config,
                                                                                     tmp_path, monkeypatch):
    teachers = f"teachers=[{model_spec('weak')},{model_spec('strong')}]"  # two CLIPs that differ
    config = tiny_config("method.reweighting=eur", "method.guidance=raven", "method.raven.lr=0.1",
                         "method.raven.freeze=0", teachers)
    whole = train(config, tmp_path / "whole", home=world_home)
    weights = read_checkpoint_config(whole)["robust_w2s"]["teacher_weights"]
    assert list(weights) == [model_spec("weak"), model_spec("strong")]
    assert sum(weights.values()) == pytest.approx(1.0) and weights[model_spec("weak")] != 0.5
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    steps = [line for line in log if "loss" in line]
    assert len(steps) == 6 and all(abs(s["teacher_weight_0"] + s["teacher_weight_1"] - 1) < 1e-6 for s in steps)

    real_save_state = state.save_state

    def save_then_die(*args, **kwargs):
        real_save_state(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(state, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", home=world_home)
    monkeypatch.setattr(state, "save_state", real_save_state)
    resumed = train(config, tmp_path / "killed", home=world_home, resume=True)
    assert read_checkpoint_config(resumed)["robust_w2s"]["teacher_weights"] == weights
    a, b = load_file(whole / WEIGHTS_FILE), load_file(resumed / WEIGHTS_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_selective_w2s_with_graph_guidance_records_pik(world_home, tiny_config, tmp_path):
    config = tiny_config("method.name=vanilla-w2s", "method.reweighting=pik", "method.guidance=graph",
                         "method.pik.labels=32", "method.graph.neighbours=4", "train.steps=2")
    train(config, tmp_path / "run", home=world_home)
    start = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert start["pik"]["n_labels"] == 32 and start["pik"]["n_holdout"] == round(0.2 * 32)
    with pytest.raises(UserError, match="at least two"):
        train(tiny_config("method.guidance=average", f"teachers=[{model_spec('weak')}]"), tmp_path / "x",
              home=world_home)


def test_hooks_of_other_methods_are_refused_not_ignored():
    with pytest.raises(UserError, match="method.guidance is a hook of adv-w2s and vanilla-w2s, not of 'tecoa'"):
        M.get_method(M.MethodSettings(name="tecoa", guidance="raven"))
    with pytest.raises(UserError, match="unknown method.reweighting 'eru'"):
        M.get_method(M.MethodSettings(reweighting="eru"))
