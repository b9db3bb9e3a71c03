"""The paper's four claims, each checked against a study's numbers: the science of the report,
apart from how tables are drawn (``study.report``). Each verdict is "holds", "partly", "does not
hold" or "cannot be tested", with the numbers it rests on."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .plan import CEILING
from .results import MIN_PGR_GAP, Results, Stat


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    verdict: str          # "holds", "partly", "does not hold"
    evidence: str


def _beyond_noise(a: Stat, b: Stat) -> float:
    """Two standard errors of the difference of two seed means (0 with one seed: no estimate)."""
    return 2 * math.sqrt(a.sem ** 2 + b.sem ** 2)


def claims(results: Results) -> list[Claim]:
    zs = "zero-shot"
    robust = lambda group: results.stat(group, "pgd", zs)  # noqa: E731 (a local shorthand)
    clean = lambda group: results.stat(group, "clean", zs)  # noqa: E731
    found = []

    # (a) vanilla W2S from the robust teacher: share of the teacher's robustness advantage it gains.
    strong, teacher, vanilla = robust("strong"), robust("weak-robust"), robust("vanilla-w2s")
    advantage = teacher.mean - strong.mean
    share = (vanilla.mean - strong.mean) / advantage if advantage >= MIN_PGR_GAP else None
    found.append(Claim(
        "a", "vanilla W2S transfers at most a third of the teacher's robustness",
        "cannot be tested" if share is None else "holds" if share <= 1 / 3 else "does not hold",
        f"zero-shot robust: strong {strong}, robust teacher {teacher}, vanilla W2S student {vanilla}: "
        + ("the teacher is not more robust than the strong model, so there is nothing to transfer."
           if share is None else
           f"it gains {share:.0%} of the teacher's advantage over the strong model (claim: at most 33%).")))

    # (b) adversarial W2S from the natural teacher: robustness beyond its start and its teacher.
    natural, adversarial = robust("weak"), robust("adv-w2s-base-natural")
    margin = _beyond_noise(adversarial, strong)
    above_start = adversarial.mean - strong.mean > margin
    above_teacher = adversarial.mean > natural.mean
    found.append(Claim(
        "b", "adversarial W2S transfers robustness even from a non-robust teacher",
        "holds" if above_start and above_teacher else "partly" if above_start else "does not hold",
        f"zero-shot robust: strong {strong}, natural teacher {natural}, adversarial W2S student from it "
        f"{adversarial} ({100 * (adversarial.mean - strong.mean):+.1f} points over the strong model; "
        f"{'above' if above_teacher else 'not above'} its teacher); from the robust teacher the same "
        f"objective reaches {robust('adv-w2s-base')}."))

    # (c) EUR and IAR each improve over the base (clean and robust, zero-shot).
    parts, verdicts = [], []
    base_clean, base_robust = clean("adv-w2s-base"), robust("adv-w2s-base")
    for name, group in (("EUR", "adv-w2s-eur"), ("IAR", "adv-w2s-iar")):
        d_clean, d_robust = clean(group).mean - base_clean.mean, robust(group).mean - base_robust.mean
        noise = (_beyond_noise(clean(group), base_clean), _beyond_noise(robust(group), base_robust))
        better = [d > n for d, n in zip((d_clean, d_robust), noise)]
        worse = [d < -n for d, n in zip((d_clean, d_robust), noise)]
        verdicts.append("holds" if any(better) and not any(worse) and min(d_clean, d_robust) >= 0
                        else "partly" if any(better) else "does not hold")
        parts.append(f"+{name}: clean {100 * d_clean:+.1f} (noise ±{100 * noise[0]:.1f}), robust "
                     f"{100 * d_robust:+.1f} (noise ±{100 * noise[1]:.1f}) points → {verdicts[-1]}")
    overall = "holds" if set(verdicts) == {"holds"} else "does not hold" if set(verdicts) == {"does not hold"} \
        else "partly"
    found.append(Claim("c", "EUR and IAR each improve over the base", overall,
                       f"zero-shot, against the base {base_clean} clean / {base_robust} robust; noise = two "
                       "standard errors of the difference over seeds: " + "; ".join(parts) + "."))

    # (d) the full student against its robust teacher, on the zero-shot tasks.
    student_clean, student_robust = clean("adv-w2s"), robust("adv-w2s")
    teacher_clean = clean("weak-robust")
    wins = [student_robust.mean > teacher.mean, student_clean.mean > teacher_clean.mean]
    found.append(Claim(
        "d", "the student beats its robust weak teacher in zero-shot robust accuracy, with higher clean accuracy",
        "holds" if all(wins) else "partly" if any(wins) else "does not hold",
        f"zero-shot clean / robust: Adv-W2S student {student_clean} / {student_robust}, robust teacher "
        f"{teacher_clean} / {teacher}; TeCoA with labels {clean(CEILING)} / {robust(CEILING)}."))
    return found
