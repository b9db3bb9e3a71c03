"""docs/bad-inputs.md, checked: every row of its tables is run here, and every case here is a row.

A row gives a command as the user types it, the one line it prints on stderr (``…`` where the text
depends on the machine or the data) and the exit code. Its case runs the command through
``robust_w2s.cli.main`` in a fresh folder holding the files the row names (``CASES``: what each row
needs made first, and what to check after), with $RW2S_HOME at the session's tiny world and the hub
offline.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
import huggingface_hub
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

import robust_w2s.checkpoints
from robust_w2s import load_checkpoint
from robust_w2s.checkpoints import atomic_folder, atomic_write_text, exclusive_folder
from robust_w2s.cli import main
from robust_w2s.data import HUB_MIRROR_ENV

DOC = Path(__file__).parents[1] / "docs" / "bad-inputs.md"
TINY_YAML = """\
# A valid two-step run on the test world: each row changes one thing.
train: {steps: 2, batch_size: 16, checkpoint_every: 1, eval_every: 0}
attack: {steps: 1, refine_steps: 1}
optim: {warmup_steps: 1, lr: 1.0e-4}
check: {tasks: []}
"""
PWNED = "pwned"  # the file a command smuggled into a config, a --set value or a pickle would create


@dataclass(frozen=True)
class Row:
    command: list[str]  # argv after "robust-w2s"
    stderr: str         # the documented line, "…" where it elides
    code: int


def read_table(path: Path = DOC) -> dict[str, Row]:
    """Every table row of ``path``: id -> Row (the input's first code span is the command)."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != 4 or cells[0] in ("id", "---"):
            continue
        command = _code_spans(cells[1])[0]
        assert command.startswith("robust-w2s "), (cells[0], command)
        assert cells[0] not in rows, f"row id {cells[0]} twice"
        rows[cells[0]] = Row(shlex.split(command)[1:], _code_spans(cells[2])[0], int(cells[3]))
    return rows


def _code_spans(cell: str) -> list[str]:
    """The code spans of a markdown cell, with CommonMark's rule for one padding space each side."""
    spans = [m.group(2) for m in re.finditer(r"(`+)(.+?)(?<!`)\1(?!`)", cell)]
    return [s[1:-1] if len(s) > 2 and s[0] == s[-1] == " " else s for s in spans]


def matches(documented: str, line: str) -> bool:
    """Whether ``line`` is the documented line, each "…" standing for any text."""
    return re.fullmatch(".*".join(re.escape(part) for part in documented.split("…")), line) is not None


def message_lines(stderr: str) -> list[str]:
    """What a terminal shows of ``stderr`` beyond progress bars: each line's text after its last
    carriage return, without the final frames of closed bars (they hold an elapsed time "[00:00")."""
    shown = [line.rsplit("\r", 1)[-1] for line in stderr.split("\n")]
    return [line for line in shown if line.strip() and not re.search(r"\[\d+:\d\d", line)]


# --- what the rows' files are ---------------------------------------------------------------------

def _write(name: str, text: str):
    return lambda work, request: (work / name).write_text(text)


def _checkpoint(work: Path, name: str, world: Path) -> Path:
    """A copy of the test world's weak CLIP as the checkpoint folder ``name``, to be damaged."""
    return Path(shutil.copytree(world / "world" / "weak", work / name))


def _world(request) -> Path:
    return request.getfixturevalue("world_home")


def _wrong_arch(work, request):
    folder = _checkpoint(work, "wrong-arch", _world(request))
    shutil.copy(_world(request) / "world" / "strong" / "open_clip_model.safetensors", folder)


def _truncated_checkpoint(work, request):
    weights = _checkpoint(work, "truncated", _world(request)) / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


class _RunsOnUnpickling:
    """Unpickled, this object runs ``touch pwned``: weights-only loading must refuse it unread."""

    def __reduce__(self):
        return os.system, (f"touch {PWNED}",)


def _pickled_file(work, request):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": _RunsOnUnpickling()}, work / "pickled.pt")


def _pickled_checkpoint(work, request):
    folder = _checkpoint(work, "pickled", _world(request))
    (folder / "open_clip_model.safetensors").unlink()
    torch.save({"args": _RunsOnUnpickling()}, folder / "open_clip_pytorch_model.bin")


def _truncated_torch_file(work, request):
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(100)}, buffer)
    (work / "truncated.pt").write_bytes(buffer.getvalue()[:300])


def _checkpoint_config(name: str, text: str):
    def setup(work, request):
        (_checkpoint(work, name, _world(request)) / "open_clip_config.json").write_text(text)
    return setup


def _weak_weights(work, request):
    shutil.copy(_world(request) / "world" / "weak" / "open_clip_model.safetensors", work / "weak.safetensors")


def _image_tower(work, request):
    torch.save({"conv1.weight": torch.zeros(1), "proj": torch.zeros(1)}, work / "tower.pt")


def _folders(*names: str):
    def setup(work, request):
        for name in names:
            (work / name).mkdir(parents=True)
    return setup


def _notes_folder(work, request):
    (work / "notes").mkdir()
    (work / "notes" / "todo.txt").write_text("keep me")


def _saved(name: str, labels: list | None, feature=None, splits: tuple[str, ...] = ()):
    """A save_to_disk dataset of 8x8 images ``name`` (with a label column unless ``labels`` is None;
    a DatasetDict of ``splits`` if given)."""
    def setup(work, request):
        columns = {"image": [Image.new("RGB", (8, 8), (60 * i, 0, 0)) for i in range(3)]}
        features = {"image": datasets.Image()}
        if labels is not None:
            columns["label"], features["label"] = labels, feature
        dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
        if splits:
            dataset = datasets.DatasetDict({split: dataset for split in splits})
        dataset.save_to_disk(str(work / name))
    return setup


def _image_folder(name: str, corrupt: str):
    """An image folder of three classes, two PNGs each; the files matching ``corrupt`` are not PNGs."""
    def setup(work, request):
        for cls in ("apple", "banana", "cherry"):
            (work / name / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (200, 40, 0)).save(work / name / cls / f"{i}.png")
        for file in (work / name).glob(corrupt):
            file.write_bytes(b"not a png")
    return setup


def _copy_run(work: Path, request) -> Path:
    shutil.copytree(request.getfixturevalue("trained_run"), work / "run")
    return work / "run"


def _held_by_another_run(work, request):
    """run/ locked as a running align holds it (its own open file: flock locks conflict even within
    one process), until the test ends."""
    stack = contextlib.ExitStack()
    stack.enter_context(exclusive_folder(work / "run"))
    request.addfinalizer(stack.close)


def _two_process_run(work, request):
    """The run as 2 processes save it: the same config and files, one RNG state per process."""
    path = _copy_run(work, request) / "state" / "train_state.pt"
    state = torch.load(path, weights_only=True)
    state["rng"] = state["rng"] * 2
    torch.save(state, path)


def _damaged_run(file: str, keep_bytes: int | None):
    """A copy of the trained run whose state/FILE is cut to ``keep_bytes``, or deleted (None)."""
    def setup(work, request):
        path = _copy_run(work, request) / "state" / file
        if keep_bytes is None:
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:keep_bytes])
    return setup


def _damaged_log(work, request):
    """A copy of the trained run whose log's first line is not JSON (not the cut-short last line)."""
    path = _copy_run(work, request) / "log.jsonl"
    path.write_text("hello\n" + path.read_text())


def _disk_fills_at_second_checkpoint(work, request):
    """safetensors' own error on a full disk (as measured on a full tmpfs), at the step-2 checkpoint."""
    real, calls = robust_w2s.checkpoints.save_file, []

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(*args, **kwargs)
    request.getfixturevalue("monkeypatch").setattr(robust_w2s.checkpoints, "save_file", save_file)


def _step(checkpoint: Path) -> int:
    return json.loads((checkpoint / "open_clip_config.json").read_text())["robust_w2s"]["step"]


def _full_disk_left_the_last_checkpoint(work: Path):
    run = work / "run"
    assert _step(run / "checkpoint") == 1 and load_checkpoint(run / "checkpoint")[0] is not None
    assert torch.load(run / "state" / "train_state.pt", weights_only=True)["step"] == 1
    assert not [p.name for p in run.iterdir() if p.name.startswith((".checkpoint.", ".state."))]  # no staging left
    # Space is back (the failing writer failed once): the run resumes from its step-1 state and ends.
    assert main(["align", "--config", "tiny.yaml", "--output-dir", "run", "--resume"]) == 0
    assert _step(run / "checkpoint") == 2


def _nothing_ran(work: Path):
    assert not (work / PWNED).exists()


@dataclass(frozen=True)
class Case:
    setup: Callable | None = None  # (work folder, pytest request): makes the files the row names
    then: Callable | None = None   # (work folder): checks what the command left


NOTHING = Case()
UNEXECUTED = Case(then=_nothing_ran)
CASES: dict[str, Case] = {
    "config-missing": NOTHING,
    "config-invalid-yaml": Case(_write("broken.yaml", "optim: {lr: [\n")),
    "config-not-a-mapping": Case(_write("list.yaml", "- a\n- b\n")),
    "config-python-tag": Case(_write("tag.yaml", f"optim: {{lr: !!python/object/apply:os.system [touch {PWNED}]}}\n"),
                              _nothing_ran),
    "set-unknown-key": NOTHING, "set-section": NOTHING, "set-no-equals": NOTHING, "set-wrong-type": NOTHING,
    "set-float-for-int": NOTHING, "set-bool-for-int": NOTHING, "set-fraction-for-number": NOTHING,
    "set-string-for-list": NOTHING, "set-invalid-yaml": NOTHING,
    "set-python-tag": UNEXECUTED, "set-python-expression": UNEXECUTED, "set-python-expression-as-name": UNEXECUTED,
    "set-python-expression-as-spec": UNEXECUTED, "set-hook-of-another-method": NOTHING,
    "set-lr-negative": NOTHING, "set-lr-nan": NOTHING, "set-steps-zero": NOTHING, "set-beta-above-one": NOTHING,
    "set-ema-decay-one": NOTHING, "set-attack-steps-negative": NOTHING, "set-workers-negative": NOTHING,
    "set-unknown-method": NOTHING, "set-retired-key": NOTHING, "set-unknown-guidance": NOTHING,
    "set-one-teacher-combined": NOTHING, "set-duplicate-teachers": NOTHING, "set-teachers-unused": NOTHING, "demo-set-refused-by-a-run": NOTHING, "set-pik-labels": NOTHING, "set-graph-neighbours": NOTHING,
    "set-unknown-precision": NOTHING, "set-step-size": NOTHING,
    "set-unknown-device": NOTHING, "set-absent-device": NOTHING, "set-unknown-check-task": NOTHING,
    "set-batch-too-large": NOTHING, "demo-set-checked-first": NOTHING,

    "eps-zero-denominator": NOTHING, "eps-not-a-number": NOTHING, "eps-negative": NOTHING, "eps-above-one": NOTHING,
    "eps-nan": NOTHING, "eps-three-parts": NOTHING, "eps-empty-item": NOTHING, "eps-empty": NOTHING,
    "eps-twice": NOTHING, "eps-config-above-one": NOTHING, "eps-config-not-a-number": NOTHING,
    "eps-world-without-world": NOTHING,

    "spec-empty": NOTHING, "spec-unknown-architecture": NOTHING, "spec-unknown-tag": NOTHING,
    "spec-nothing-after-at": NOTHING, "spec-no-file-after-tag": NOTHING, "spec-unknown-lineage": Case(_weak_weights),
    "spec-missing-file": NOTHING, "spec-folder-as-file": Case(_folders("weights")),
    "spec-wrong-architecture-file": Case(_weak_weights), "spec-image-tower-without-lineage": Case(_image_tower),
    "spec-not-weights-only": Case(_pickled_file, _nothing_ran), "spec-corrupt-torch-file": Case(_truncated_torch_file),
    "spec-missing-folder": NOTHING, "spec-missing-path": NOTHING, "spec-unknown-embedded": NOTHING,
    "spec-embedded-not-built": NOTHING, "spec-hub-offline": NOTHING, "spec-teacher-unknown": NOTHING,

    "checkpoint-wrong-architecture": Case(_wrong_arch),
    "checkpoint-corrupt-safetensors": Case(_truncated_checkpoint),
    "checkpoint-not-weights-only": Case(_pickled_checkpoint, _nothing_ran),
    "checkpoint-config-not-json": Case(_checkpoint_config("bad-json", "{not json")),
    "checkpoint-config-unbuildable": Case(_checkpoint_config("bad-config", '{"model_cfg": {"vision_cfg": {}}}')),
    "checkpoint-not-a-checkpoint": Case(_folders("empty")),
    "convert-over-other-files": Case(_notes_folder),

    "dataset-unknown-name": NOTHING, "dataset-unknown-suite": NOTHING, "dataset-unknown-spec": NOTHING,
    "dataset-missing-path": NOTHING, "dataset-not-parquet": NOTHING, "dataset-empty-folder": Case(_folders("empty")),
    "dataset-hub-unreachable": NOTHING,
    "dataset-split-not-named": Case(_saved("splits", [0, 1, 2], datasets.ClassLabel(names=["a", "b", "c"]),
                                           splits=("train", "validation"))),
    "dataset-unknown-split": Case(_saved("splits", [0, 1, 2], datasets.ClassLabel(names=["a", "b", "c"]),
                                         splits=("train", "validation"))),
    "dataset-no-label-column": Case(_saved("unlabelled", None)),
    "dataset-int-labels-unnamed": Case(_saved("ints", [0, 1, 3], datasets.Value("int64"))),
    "dataset-label-out-of-range": Case(_saved("ints", [0, 1, 3], datasets.Value("int64"))),
    "dataset-missing-labels": Case(_saved("gaps", ["circle", None, "square"], datasets.Value("string"))),
    "dataset-corrupt-image": Case(_image_folder("fruit", corrupt="banana/1.png")),
    "dataset-every-image-corrupt": Case(_image_folder("broken", corrupt="*/*.png")),
    "classnames-count": Case(_saved("abc", [0, 1, 2], datasets.ClassLabel(names=["a", "b", "c"]))),
    "classnames-order": Case(_saved("abc", [0, 1, 2], datasets.ClassLabel(names=["a", "b", "c"]))),
    "classnames-duplicate": Case(_saved("abc", [0, 1, 2], datasets.ClassLabel(names=["a", "b", "c"]))),
    "classnames-missing-file": Case(_saved("abc", [0, 1, 2], datasets.ClassLabel(names=["a", "b", "c"]))),
    "classnames-empty-file": Case(_saved("abc", [0, 1, 2], datasets.ClassLabel(names=["a", "b", "c"]))),
    "classnames-with-suite": NOTHING,
    "align-no-image-column": NOTHING, "align-no-label-column": NOTHING,
    "align-no-class-names": Case(_saved("unlabelled", None)),
    "align-string-labels-unnamed": Case(_saved("strings", ["circle", "square", "circle"], datasets.Value("string"))),

    "align-folder-in-use": Case(_held_by_another_run), "align-folder-is-a-file": NOTHING,
    "resume-no-state": NOTHING,
    "resume-other-config": Case(_copy_run),
    "resume-other-process-count": Case(_two_process_run),
    "resume-damaged-state": Case(_damaged_run("train_state.pt", keep_bytes=300)),
    "resume-damaged-log": Case(_damaged_log),
    "resume-state-without-config": Case(_damaged_run("config.json", keep_bytes=None)),

    "disk-full-while-saving": Case(_disk_fills_at_second_checkpoint, _full_disk_left_the_last_checkpoint),

    "flag-unknown-command": NOTHING, "flag-unknown-option": NOTHING, "flag-missing-model": NOTHING,
    "flag-suite-and-dataset": NOTHING, "flag-not-an-int": NOTHING, "flag-n-samples-zero": NOTHING,
    "flag-batch-size-zero": NOTHING, "flag-unknown-attack": NOTHING, "flag-empty-attack": NOTHING,
    "flag-unknown-protocol": NOTHING, "flag-pgd-steps-zero": NOTHING, "flag-unknown-device": NOTHING,
    "flag-absent-device": NOTHING, "flag-output-dir-is-a-file": NOTHING, "flag-output-dir-under-a-file": NOTHING,
    "flag-output-is-a-folder": Case(_folders("notes")), "flag-demo-seeds-zero": NOTHING,
    "flag-demo-workers-zero": NOTHING, "flag-theory-unknown": NOTHING, "flag-theory-set-range": NOTHING,
    "flag-theory-set-all": NOTHING, "flag-theory-set-expression": UNEXECUTED,
}
COMMON_FILES = {"tiny.yaml": TINY_YAML, "notes.txt": "not a dataset\n", "two.txt": "a\nb\n", "three.txt": "a\nb\nc\n",
                "bac.txt": "b\na\nc\n", "aac.txt": "a\na\nc\n", "empty.txt": ""}


@pytest.fixture(scope="session")
def trained_run(world_home, tmp_path_factory) -> Path:
    """A finished two-step run of tiny.yaml (checkpoint/, state/, log.jsonl), for the resume rows."""
    work = tmp_path_factory.mktemp("trained")
    (work / "tiny.yaml").write_text(TINY_YAML)
    code = main(["align", "--config", str(work / "tiny.yaml"), "--output-dir", str(work / "run"),
                 "--home", str(world_home)])
    assert code == 0
    return work / "run"


def test_every_row_is_a_case_and_every_case_a_row():
    rows = read_table()
    assert sorted(set(rows) - set(CASES)) == [], "rows of docs/bad-inputs.md without a case here"
    assert sorted(set(CASES) - set(rows)) == [], "cases here without a row in docs/bad-inputs.md"


def test_the_line_matching_reads_ellipses_as_any_text_and_nothing_else():
    assert matches("error: unknown x 'a'; valid: …", "error: unknown x 'a'; valid: b, c")
    assert matches("a … c", "a b c") and not matches("a … c", "a b c d") and not matches("a b", "a b c")
    assert not matches("label 3 (x)", "label 3 x")  # everything but … is literal
    assert message_lines("\rbar:  50%|##   | 1/2 [00:00<00:01]\rbar: 100%|####| 2/2 [00:01<00:00]\n"
                         "robust-w2s x: error: y\n") == ["robust-w2s x: error: y"]
    assert message_lines("\rbar:   0%|     | 0/2 [00:00<?]robust-w2s x: error: y\n") == []  # glued to a bar


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_its_documented_line_and_exit_code(case, world_home, tmp_path, monkeypatch, capsys,
                                                           request):
    row = read_table().get(case)
    assert row is not None, f"no row {case} in docs/bad-inputs.md"
    work = tmp_path / "work"
    work.mkdir()
    for name, text in COMMON_FILES.items():
        (work / name).write_text(text)
    monkeypatch.chdir(work)
    monkeypatch.setenv("RW2S_HOME", str(world_home))
    monkeypatch.setenv(HUB_MIRROR_ENV, str(work / "hub-mirror"))  # hf: ids read from an empty local mirror
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(work / "hub-cache"))
    if CASES[case].setup:
        CASES[case].setup(work, request)
    capsys.readouterr()
    try:
        code = main(row.command)
    except SystemExit as exit:  # argparse's errors exit from inside parse_args
        code = exit.code
    lines = message_lines(capsys.readouterr().err)
    assert code == row.code, lines
    assert len(lines) == 1, lines
    assert matches(row.stderr, lines[0]), f"\ndocumented: {row.stderr}\nprinted:    {lines[0]}"
    if CASES[case].then:
        CASES[case].then(work)


def _torch_save_full_disk() -> RuntimeError:
    """What torch.save raises on a full disk when writing through a Python file (a full tmpfs)."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    except RuntimeError as error:
        return error


@pytest.mark.parametrize("raised, code", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
    (_torch_save_full_disk(), errno.ENOSPC),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
    (RuntimeError("a bug, not a full disk"), None),
], ids=["oserror", "safetensors", "torch-save", "quota", "other"])
def test_a_full_disk_however_reported_is_an_oserror_naming_the_target(tmp_path, raised, code):
    folder, file = tmp_path / "checkpoint", tmp_path / "record.json"
    with atomic_folder(folder) as staging:
        (staging / "w").write_text("complete")
    atomic_write_text(file, "complete")

    def failing_writer(staging: Path):
        (staging / "w").write_text("partial")
        raise raised

    with pytest.raises(Exception) as in_folder:
        with atomic_folder(folder) as staging:
            failing_writer(staging)
    with pytest.raises(Exception) as in_file:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("os.fsync", lambda fd: failing_writer(tmp_path))
            atomic_write_text(file, "partial")
    for info, target in ((in_folder, folder), (in_file, file)):
        if code is None:
            assert info.value is raised  # anything else goes on unchanged, traceback and all
        else:
            assert isinstance(info.value, OSError) and info.value.errno == code
            assert info.value.filename == str(target) and info.value.__cause__ is raised
    assert (folder / "w").read_text() == "complete" and file.read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "record.json", "w"]  # no staging left
