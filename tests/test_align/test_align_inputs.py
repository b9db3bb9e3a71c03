"""Labels are structurally hidden from label-free methods; IAR refines the teacher in its ball."""
import pytest
import torch

from robust_w2s.attacks import cross_entropy, inverse_adversarial
from robust_w2s.align import methods as M
from robust_w2s.align.config import load_config
from robust_w2s.align.inputs import Batch, Models, StepInputs
from robust_w2s.align.loop import train
from robust_w2s.align.setup import Dist, PixelView, alignment_data, load_teacher, teacher_cache
from robust_w2s.layout import read_world
from robust_w2s.models import eval_transform, load_model


@pytest.mark.parametrize("name", list(M.METHODS))
def test_dataset_has_a_label_column_only_for_methods_defined_with_labels(world_home, tiny_config, name):
    config = tiny_config(f"method.name={name}")
    plan = M.Plan.build(config.method)
    dataset, classnames, *_ = alignment_data(config, plan, read_world(world_home), world_home)
    assert ("label" in dataset.column_names) == (name in ("tecoa", "pmg-aft"))
    assert dataset.column_names[0] == "image" and classnames


def test_a_label_free_method_cannot_read_labels_even_when_it_tries(world_home, tiny_config, monkeypatch):
    seen = []

    def sneaky(settings):  # a method that does not declare labels but asks for them
        def loss(inputs):
            seen.append(inputs.batch.labels)
            inputs["labels"]
        return M.Method("sneaky", frozenset({"adv_logits"}), loss, M.Attack(lambda i: i["adv_logits"]))

    monkeypatch.setitem(M.METHODS, "sneaky", sneaky)
    with pytest.raises(KeyError, match="did not declare input 'labels'"):
        train(tiny_config("method.name=sneaky"), world_home / "sneaky", home=world_home)
    assert seen == [None]  # and the batch itself carried no labels: the column was removed


def test_iar_lowers_the_teachers_ce_to_its_own_prediction_within_its_ball(world_home):
    world = read_world(world_home)
    task = world["alignment_task"]
    student, _, _ = load_model("embedded:strong", home=world_home)
    transform = eval_transform(student, normalize=False)
    teacher = load_teacher("embedded:weak-robust", home=world_home, device="cpu", classnames=world["classnames"][task],
                           templates=world["templates"][task], image_size=transform.transforms[0].size)
    dataset, *_ = alignment_data(load_config(), M.Plan.build(M.MethodSettings()), world, world_home)
    view = PixelView(dataset.select(range(32)), transform, "image", None)
    probs = teacher_cache(teacher, view, Dist(0, 1, torch.device("cpu")))
    images = torch.stack([view[i]["pixels"] for i in range(32)])
    eps = 4 / 255
    models = Models(student=None, student_plain=None, frozen=None, teacher=teacher, caches={"teacher_probs": probs},
                    entropy_median=None, attack={},
                    refine={"eps": eps, "steps": 3, "alpha": eps / 2, "start_noise_std": 0.001},
                    attack_rng=torch.Generator(), refine_rng=torch.Generator().manual_seed(0))
    method = M.get_method(M.MethodSettings(guidance="iar"))
    inputs = StepInputs(method, Batch(images, None, {"teacher_probs": probs}), models, 0.0)
    refined = inputs["refined_teacher_probs"]
    prediction = probs.argmax(dim=1)
    before = -(probs.log().gather(1, prediction[:, None])).sum()
    after = -(refined.log().gather(1, prediction[:, None])).sum()
    assert after < before
    assert (refined.argmax(1) == prediction).float().mean() >= (probs.argmax(1) == prediction).float().mean()
    # the refined images themselves stay in the eps-ball and in [0, 1]
    x_tilde = inverse_adversarial(teacher, images, eps=eps, steps=3, alpha=eps / 2, prediction=prediction,
                                  generator=torch.Generator().manual_seed(0), start_noise_std=0.001)
    assert (x_tilde - images).abs().max() <= eps + 1e-6 and x_tilde.min() >= 0 and x_tilde.max() <= 1
    assert cross_entropy(teacher(x_tilde), prediction) < cross_entropy(teacher(images), prediction)



def test_declared_labels_are_checked_and_mapped_before_training(world_home, tmp_path):
    import datasets
    from PIL import Image

    from robust_w2s.errors import UserError
    images = [Image.new("RGB", (32, 32), (60 * i, 0, 0)) for i in range(4)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": images, "label": [1, 2, 3, 3]}, features=features),
        "test": datasets.Dataset.from_dict({"image": images[:2], "label": [1, 1]}, features=features),
    }).save_to_disk(str(tmp_path / "one_based"))
    plan = M.Plan.build(M.MethodSettings(name="tecoa"))
    spec = f"local:{tmp_path / 'one_based'}"
    with pytest.raises(UserError, match="label 3 .* out of range for 3 class names"):  # read as 0-based
        alignment_data(load_config(None, [f"data.dataset={spec}", "data.classnames=[a,b,c]"]), plan, None, world_home)
    dataset, names, _, labels, _ = alignment_data(
        load_config(None, [f"data.dataset={spec}", "data.classnames=[z,a,b,c]"]), plan, None, world_home)
    assert len(dataset) == 4, "alignment reads the train split"
    view = PixelView(dataset, lambda image: torch.zeros(1), "image", labels)
    assert [view[i]["label"] for i in range(4)] == [1, 2, 3, 3] and names == ["z", "a", "b", "c"]
