"""The paper's four claims (a-d) and the seed papers' claims (e-i: RAVEN, Selective W2SG, and one
beyond them), each checked against a study's numbers: the science of the report, apart from how
tables are drawn (``study.report``). Each verdict is "holds", "partly", "does not hold" or "cannot be
tested", with the numbers it rests on. "Robust" is the per-sample worst case of every attack of the
main evaluation (PGD-20 and APGD-CE), never PGD-20 alone."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .plan import CEILING, MIX_RUN, SHIFTED_SPLIT
from .results import MIN_PGR_GAP, Results, Stat


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    verdict: str          # "holds", "partly", "does not hold"
    evidence: str


CLEAR_CORRELATION = 0.5  # claim (g): Spearman's rho of weights against accuracy counted as clearly positive


def _beyond_noise(a: Stat, b: Stat) -> float:
    """Two standard errors of the difference of two seed means (0 with one seed: no estimate)."""
    return 2 * math.sqrt(a.sem ** 2 + b.sem ** 2)


def claims(results: Results) -> list[Claim]:
    single = results.single_seed
    zs = "zero-shot"
    robust = lambda group: results.stat(group, "worst", zs)  # noqa: E731 (a local shorthand)
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
        parts.append(f"+{name}: clean {100 * d_clean:+.1f} ({_noise(100 * noise[0], single)}), robust "
                     f"{100 * d_robust:+.1f} ({_noise(100 * noise[1], single)}) points → {verdicts[-1]}")
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
    return found + seed_claims(results)


def _compare(a: Stat, b: Stat) -> tuple[float, float]:
    """(a - b in points, two standard errors of the difference in points)."""
    return 100 * (a.mean - b.mean), 100 * _beyond_noise(a, b)


def _noise(points: float, single_seed: bool) -> str:
    """"noise ±x" for an evidence line; with one seed there is no estimate (the verdicts then use 0)."""
    return "one seed: no noise estimate" if single_seed else f"noise ±{points:.1f}"


SEED_STATEMENTS = {
    "e": "naive W2S under shift ends below its best weak supervisor",
    "f": "RAVEN beats naive teacher averaging under shift and matches it in distribution",
    "g": "RAVEN's learned weights favour the more accurate teachers",
    "h": "Selective W2SG beats plain W2S from the same teacher",
    "i": "adversarial RAVEN over a natural and a robust teacher gets the first's clean and the second's robust "
         "accuracy",
}


def seed_claims(results: Results) -> list[Claim]:
    """RAVEN's and Selective W2SG's claims, and adversarial RAVEN over a natural and a robust teacher."""
    needed = ("average-shifted", "raven-shifted", "raven", "average", "selective", MIX_RUN)
    if not all(results.has(group) for group in needed):
        return [Claim(key, statement, "cannot be tested", "this study has no Table D runs.")
                for key, statement in SEED_STATEMENTS.items()]
    single = results.single_seed
    zs = "zero-shot"
    clean = lambda group: results.stat(group, "clean", zs)  # noqa: E731
    robust = lambda group: results.stat(group, "worst", zs)  # noqa: E731
    found = []

    # (e) RAVEN's motivation: under shift, naive (averaged) W2S can end below the best weak teacher.
    teachers = results.teachers("average-shifted")
    best = max(teachers, key=lambda t: clean(t).mean)
    naive = clean("average-shifted")
    gap, noise = _compare(naive, clean(best))
    found.append(Claim(
        "e", SEED_STATEMENTS["e"],
        "holds" if gap < -noise else "partly" if gap < 0 else "does not hold",
        f"aligned on `{SHIFTED_SPLIT}`, zero-shot clean: naive average student {naive}, best teacher "
        f"({results.label(best)}) {clean(best)}: {gap:+.1f} points ({_noise(noise, single)})."))

    # (f) RAVEN against naive averaging: better under shift, no worse in distribution.
    shifted, noise_s = _compare(clean("raven-shifted"), clean("average-shifted"))
    in_dist, noise_i = _compare(clean("raven"), clean("average"))
    found.append(Claim(
        "f", SEED_STATEMENTS["f"],
        "holds" if shifted > noise_s and in_dist >= -noise_i else "partly" if shifted > 0 and in_dist >= -noise_i
        else "does not hold",
        f"zero-shot clean, RAVEN − naive average: {shifted:+.1f} points on `{SHIFTED_SPLIT}` ({_noise(noise_s, single)}; "
        f"{clean('raven-shifted')} against {clean('average-shifted')}), {in_dist:+.1f} on `alignment` "
        f"({_noise(noise_i, single)})."))

    # (g) the learned weights against each teacher's accuracy on the split it aligned on.
    parts, agreements = [], []
    for group, split in (("raven", "alignment"), ("raven-shifted", SHIFTED_SPLIT)):
        weights = results.learned_weights(group)
        accuracy = {t: results.split_accuracy(t, split) for t in weights}
        if any(a is None for a in accuracy.values()):
            parts.append(f"`{split}`: the world does not record the teachers' accuracy on it")
            continue
        # Tie-aware: the most weighted teacher is among the most accurate, whatever the list's order.
        top = accuracy[max(weights, key=weights.get)] == max(accuracy.values())
        rho = _rank_correlation([weights[t] for t in weights], [accuracy[t] for t in weights])
        agreements.append((top, rho))
        parts.append(f"`{split}`: " + ", ".join(f"{results.label(t)} {weights[t]:.2f} (accuracy {100 * accuracy[t]:.1f}%)"
                                                for t in weights) + f"; rank correlation {rho:+.2f}")
    verdict = ("cannot be tested" if not agreements else
               "holds" if all(top and rho >= CLEAR_CORRELATION for top, rho in agreements) else
               "partly" if any(rho > 0 for _, rho in agreements) else "does not hold")
    found.append(Claim("g", SEED_STATEMENTS["g"], verdict,
                       "mean learned weight over seeds against the teacher's clean accuracy on the alignment split: "
                       + "; ".join(parts) + f" (it holds when, on every split, the most weighted teacher is among the most "
                       f"accurate and the rank correlation is at least {CLEAR_CORRELATION})."))

    # (h) Selective W2SG against plain (vanilla) W2S from the same robust teacher, clean images both.
    d_id, n_id = _compare(results.stat("selective", "clean", "ID"), results.stat("vanilla-w2s", "clean", "ID"))
    d_zs, n_zs = _compare(clean("selective"), clean("vanilla-w2s"))
    better = [d > n for d, n in ((d_id, n_id), (d_zs, n_zs))]
    piks = "; ".join(f"{results.label(group)}: {results.pik(group)}"
                     for group in ("selective", "adv-selective", "selective-shifted", "adv-selective-shifted")
                     if results.has(group))
    found.append(Claim(
        "h", SEED_STATEMENTS["h"],
        "holds" if all(better) else "partly" if any(better) or min(d_id, d_zs) > 0 else "does not hold",
        f"clean accuracy, Selective W2SG {results.stat('selective', 'clean', 'ID')} ID / {clean('selective')} zero-shot, "
        f"minus vanilla W2S: ID {d_id:+.1f} ({_noise(n_id, single)}), zero-shot {d_zs:+.1f} ({_noise(n_zs, single)}) "
        f"points; the strong student before alignment: {results.stat('strong', 'clean', 'ID')} ID / {clean('strong')} "
        f"zero-shot. P(IK) on its held-out labelled images: {piks}."))

    # (i) beyond the papers: adversarial RAVEN over a natural and a robust teacher. The question
    # needs a trade-off to combine: the natural teacher's student cleaner, the robust one's more robust.
    mix, natural, robust_only = MIX_RUN, "adv-w2s-base-natural", "adv-w2s-base"
    d_clean, n_clean = _compare(clean(mix), clean(natural))
    d_robust, n_robust = _compare(robust(mix), robust(robust_only))
    cleaner, c_noise = _compare(clean(natural), clean(robust_only))
    more_robust, r_noise = _compare(robust(robust_only), robust(natural))
    trade_off = cleaner > c_noise and more_robust > r_noise
    both = [d_clean >= -n_clean, d_robust >= -n_robust]
    weights = results.learned_weights(mix)
    evidence = (f"zero-shot, the learned mix {clean(mix)} clean / {robust(mix)} robust; adversarial W2S from the "
                f"natural teacher alone {clean(natural)} clean ({d_clean:+.1f}, {_noise(n_clean, single)}), from the "
                f"robust teacher alone {robust(robust_only)} robust ({d_robust:+.1f}, {_noise(n_robust, single)}); "
                "learned weights " + ", ".join(f"{results.label(t)} {w:.2f}" for t, w in weights.items()) + ".")
    if not trade_off:
        evidence += (f" But the single-teacher students do not trade off here: from the natural teacher alone "
                     f"{clean(natural)} clean / {robust(natural)} robust, from the robust one {clean(robust_only)} / "
                     f"{robust(robust_only)} (the natural one is {cleaner:+.1f} clean, {_noise(c_noise, single)}, and "
                     f"{-more_robust:+.1f} robust, {_noise(r_noise, single)}), so there is nothing for a mix to combine.")
    found.append(Claim(
        "i", SEED_STATEMENTS["i"],
        "cannot be tested" if not trade_off else
        "holds" if all(both) else "partly" if any(both) else "does not hold", evidence))
    return found


def _rank_correlation(x: list[float], y: list[float]) -> float:
    """Spearman's rho (ties get their mean rank); 0 when either side is constant."""
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return 0.0
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / (sx * sy)
