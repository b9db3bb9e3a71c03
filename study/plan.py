"""The reference study as data: which models it trains, how it evaluates them, what each table shows.

Every run is an alignment config of ``configs/embedded/`` (the same budget for every method), at
most with another teacher; the study adds nothing method-specific. ``StudySettings`` holds the
evaluation sizes of a full and a ``--quick`` study.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from robust_w2s import configs
from robust_w2s.layout import SHIFTED_ALIGNMENT_SPLIT, WORLD_MODELS, model_spec

CONFIG_DIR = Path(configs.__file__).parent / "embedded"  # configs/embedded/ (package data when installed)
NATURAL_TEACHER, ROBUST_TEACHER = model_spec("weak"), model_spec("weak-robust")
SHIFTED_SPLIT = SHIFTED_ALIGNMENT_SPLIT  # the alignment split under distribution shift (mostly outlines, textures)
MIX_RUN = "adv-raven-natural-robust"  # claim (i): adversarial RAVEN over the natural and the robust teacher


@dataclass(frozen=True)
class Run:
    """One alignment run of the study (trained once per seed)."""
    name: str                   # model id in folders, results and report rows
    config: str                 # configs/embedded/<config>.yaml
    label: str                  # how tables name it
    teacher: str = ROBUST_TEACHER  # the weak teacher (only read by methods that declare a teacher)
    w2s: bool = False           # a weak-to-strong run: PGR is computed against its teacher
    split: str = ""             # "": the config's alignment split; else the world split it aligns on

    @property
    def config_path(self) -> Path:
        return CONFIG_DIR / f"{self.config}.yaml"


RUNS: tuple[Run, ...] = (
    Run("vanilla-w2s-natural", "vanilla-w2s", "vanilla W2S", NATURAL_TEACHER, w2s=True),
    Run("adv-w2s-base-natural", "adv-w2s-base", "adversarial W2S", NATURAL_TEACHER, w2s=True),
    Run("vanilla-w2s", "vanilla-w2s", "vanilla W2S", w2s=True),
    Run("adv-w2s-base", "adv-w2s-base", "adversarial W2S (base)", w2s=True),
    Run("adv-w2s-eur", "adv-w2s-eur", "base + EUR", w2s=True),
    Run("adv-w2s-iar", "adv-w2s-iar", "base + IAR", w2s=True),
    Run("adv-w2s", "adv-w2s", "Adv-W2S (EUR + IAR)", w2s=True),
    Run("tecoa", "tecoa", "TeCoA (labels)"),
    Run("pmg-aft", "pmg-aft", "PMG-AFT (labels)"),
    Run("fare", "fare", "FARE"),
    Run("agft", "agft", "AGFT"),
    # Table D: several weak teachers, on the alignment split and on the shifted one.
    *(Run(f"{name}{suffix}", name, label, split=split)
      for suffix, split in (("", ""), ("-shifted", SHIFTED_SPLIT))
      for name, label in (("average", "naive average of teachers"), ("adv-average", "adversarial naive average"),
                          ("raven", "RAVEN"), ("adv-raven", "adversarial RAVEN"),
                          ("selective", "Selective W2SG"), ("adv-selective", "adversarial Selective W2SG"))),
    Run("adv-w2s-shifted", "adv-w2s", "Adv-W2S (EUR + IAR)", w2s=True, split=SHIFTED_SPLIT),
    Run("tecoa-shifted", "tecoa", "TeCoA (labels)", split=SHIFTED_SPLIT),
    # Beyond the papers: RAVEN's learned mix of a natural and a robust teacher on adversarial inputs.
    Run(MIX_RUN, MIX_RUN, "adversarial RAVEN (natural + robust teacher)"),
)

# The world's own models (layout.WORLD_MODELS) are evaluated once: they do not depend on the seeds.
WORLD_LABELS = {"weak": "natural weak teacher", "weak-robust": "robust weak teacher (TeCoA)",
                "strong": "strong, undefended", "weak-outline": "outline-pretrained weak teacher", "weak-poor": "poor weak teacher"}
CEILING = "tecoa"  # DESIGN.md section 5: the strong ceiling is TeCoA with labels on the same data and budget

# Table B (paper's Table 2): the defences side by side, with standard AutoAttack.
TABLE_B = ("strong", "tecoa", "pmg-aft", "fare", "agft", "adv-w2s")
# Table C (paper's Table 9): the ablation of Adv-W2S.
TABLE_C = ("adv-w2s-base", "adv-w2s-eur", "adv-w2s-iar", "adv-w2s")
# Table D (RAVEN and Selective W2SG): per alignment split, the rows, each (clean variant, adversarial variant).
# The seed papers' methods (naive averaging, RAVEN, Selective W2SG), then the rows they are held against.
SEED_METHODS = (("average", "adv-average"), ("raven", "adv-raven"), ("selective", "adv-selective"))
TABLE_D_METHODS = (*SEED_METHODS, ("vanilla-w2s", "adv-w2s"), (None, "tecoa"))
TABLE_D_SPLITS = {"alignment": "", SHIFTED_SPLIT: "-shifted"}  # split -> suffix of its run names
# Models whose robust accuracy is traced against epsilon (plot).
CURVE_MODELS = ("strong", "weak", "weak-robust", "vanilla-w2s", "adv-w2s", "tecoa", "fare")


@dataclass(frozen=True)
class StudySettings:
    """Sizes of one study. Every run shares ``overrides`` (applied to every config alike)."""
    seeds: tuple[int, ...] = (0, 1, 2)    # training seeds of every run
    overrides: tuple[str, ...] = ()       # `--set` overrides for every run, e.g. train.steps=40
    n_eval: int = 100                     # images per task: clean and PGD-20 at the world's epsilon
    n_autoattack: int = 16                # images per task for standard AutoAttack (Table B models)
    autoattack_seeds: int = 1             # AutoAttack on the first this-many seeds (its cost on CPU)
    autoattack_all_tasks: bool = True     # False: AutoAttack on the alignment task only
    n_curve: int = 24                     # images per task for the epsilon curve
    curve_eps: tuple[str, ...] = ("1/255", "2/255", "4/255", "8/255")
    audit_samples: int = 16               # images per task for the gradient and large-eps audits
    eval_seed: int = 0                    # the evaluation subsets: the same images for every model
    quick: bool = False

    def with_seeds(self, count: int) -> "StudySettings":
        return replace(self, seeds=tuple(range(count)))


FULL = StudySettings()
# A smaller but complete study: every run, table and plot, one seed, fewer steps and images.
# Standard AutoAttack at its published iteration counts costs 5-80 s per task and model on one idle
# CPU core (more robust images, more cost; 16 of the full study's 123 job-minutes, measured), so the full
# study runs it on the first seed and the quick one on the alignment task.
QUICK = StudySettings(seeds=(0,), overrides=("train.steps=30", "train.checkpoint_every=30"), n_eval=32,
                      n_autoattack=16, autoattack_all_tasks=False, n_curve=16, audit_samples=16, quick=True)


def run_overrides(run: Run, seed: int, settings: StudySettings) -> list[str]:
    """The `--set` list that turns ``run.config`` into this study's run for ``seed``."""
    # The training-time zero-shot check is off: the study evaluates every checkpoint afterwards.
    overrides = [f"teacher={run.teacher}"]
    overrides += [f"data.dataset=embedded:{run.split}"] if run.split else []
    return [*overrides, *settings.overrides, f"train.seed={seed}", "check.tasks=[]"]


def check_runs(settings: StudySettings) -> None:
    """Build every run's config and method plan with ``settings`` (its ``--set`` overrides), so that
    an override a run refuses fails before any job starts. Raises UserError naming the run."""
    from robust_w2s.align import Plan, load_config
    from robust_w2s.align.setup import check_teachers
    from robust_w2s.errors import UserError

    for run in RUNS:
        try:
            config = load_config(run.config_path, run_overrides(run, settings.seeds[0], settings))
            check_teachers(config, Plan.build(config.method))
        except UserError as error:
            raise UserError(f"run {run.name} of the study ({run.config}.yaml) refuses the overrides: {error}") from None


@dataclass(frozen=True)
class Model:
    """A model the study evaluates: a world model, or one seed of a run."""
    id: str                      # "strong", "adv-w2s/seed1"
    group: str                   # "strong", "adv-w2s": what tables aggregate over seeds
    seed: int | None = None      # None for the world's models


def study_models(settings: StudySettings) -> list[Model]:
    models = [Model(name, name) for name in WORLD_MODELS]
    models += [Model(f"{run.name}/seed{seed}", run.name, seed) for run in RUNS for seed in settings.seeds]
    return models
