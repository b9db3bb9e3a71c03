"""The theory lab's report, ``theory.md``: per experiment its setup (the module's docstring), its
plots and, per prediction, "holds here" or "does not hold here" with the numbers that decided it."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .records import write_atomic

if TYPE_CHECKING:
    from .lab import Result

INTRO = """\
Three theoretical results on weak-to-strong (W2S) generalization, each turned into a small synthetic
experiment (torch and numpy, nothing of CLIP) whose predictions are checked against its own numbers.
Where a paper's constants or exact construction were not available to us, we chose them: each
section says which, and the plots show the predictions over a range rather than at one point. A
verdict holds for this run, these constants and these seeds; it is not a verdict on the paper.
Every number comes from the JSON file named in its section, which records the full config and seed;
`robust-w2s theory NAME --set key=value` reruns one experiment with other constants."""


def markdown_text(text: str) -> str:
    """Plain text (docstrings, evidence) made safe inside Markdown: no HTML tags, emphasis or cell breaks."""
    return text.replace("<", "&lt;").replace("*", r"\*").replace("|", r"\|")


def _setup(docstring: str) -> str:
    """A docstring's paragraphs as Markdown paragraphs, minus its title (the section heading says it)."""
    paragraphs = docstring.split("\n\n")[1:]
    return "\n\n".join(" ".join(line.strip() for line in paragraph.splitlines()) for paragraph in paragraphs)


def build_markdown(results: list[Result], folder: str, command: str, seconds: float) -> str:
    """The report for ``results``, whose files are in ``folder`` (relative to the report)."""
    lines = ["# The theory lab", "", INTRO, "", "Rebuild (writes this file and everything under "
             f"`{folder}/`):", "", "```bash", command, "```", "",
             f"Wall time of that run: {seconds:.0f} s ("
             + ", ".join(f"{r.experiment} {r.seconds:.0f} s" for r in results) + "), torch on one CPU thread.",
             "", "## Verdicts", "", "| experiment | prediction | here |", "|---|---|---|"]
    for result in results:
        lines += [f"| {result.experiment} | {markdown_text(p.claim)} | **{p.verdict}** |" for p in result.predictions]
    for number, result in enumerate(results, 1):
        lines += ["", f"## {number}. {result.experiment}", "", result.paper + ".", "",
                  markdown_text(_setup(result.setup)), ""]
        lines += [f"![{figure.stem}]({folder}/{figure.name})" for figure in result.figures]
        lines += ["", "| prediction | here | numbers |", "|---|---|---|"]
        lines += [f"| {markdown_text(p.claim)} | **{p.verdict}** | {markdown_text(p.evidence)} |"
                  for p in result.predictions]
        lines += ["", f"Config and data: [`{folder}/{result.experiment}.json`]({folder}/{result.experiment}.json) "
                      f"(seed {result.config['seed']}); {result.seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def write_report(results: list[Result], output_dir: Path, command: str, seconds: float) -> Path:
    """Write ``output_dir/theory.md`` for ``results`` (their files in ``output_dir/theory/``)."""
    path = output_dir / "theory.md"
    write_atomic(path, build_markdown(results, "theory", command, seconds))
    return path
