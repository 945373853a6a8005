"""The validation summary every builder ends with, and the error it raises before writing anything."""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Iterable

from baryir_jax.errors import InputError

# Everything a builder can find wrong, in the order the summary prints them.
KINDS = {
    "missing": "missing files",
    "unpaired": "unpaired images",
    "unreadable": "unreadable or truncated files",
    "refused": "refused images",
    "converted": "converted images",
    "skipped": "skipped files (not part of the set)",
}
DETAIL_LINES = 12  # per kind in the printed summary; the JSON report has them all


class DataError(InputError):
    """The manual_dir cannot be built as it is: raised before anything is written. The message says what is
    wrong, where, and how to fix it."""


@dataclasses.dataclass
class Issue:
    kind: str
    split: str
    path: str
    detail: str

    def line(self) -> str:
        where = f"{self.split}: " if self.split else ""
        return f"[{self.kind}] {where}{self.path}: {self.detail}"


class Report:
    """Collects counts and issues while a data set is scanned and written."""

    def __init__(self, dataset: str, source: str = ""):
        self.dataset = dataset
        self.source = source
        self.issues: list[Issue] = []
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.planned: dict[str, int] = {}
        self.written: collections.Counter = collections.Counter()
        self.expected: dict[str, int] = {}
        self.failed = False  # set when nothing could be written

    # ---- recording ----
    def add(self, kind: str, split: str, path: str, detail: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown issue kind {kind!r}")
        self.issues.append(Issue(kind, split, str(path), detail))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def count(self, kind: str, split: str | None = None) -> int:
        return sum(1 for i in self.issues if i.kind == kind and (split is None or i.split == split))

    def of_kind(self, kind: str) -> list[Issue]:
        return [i for i in self.issues if i.kind == kind]

    def set_expected(self, expected: dict[str, int]) -> None:
        self.expected = dict(expected)

    def finish(self) -> None:
        """Compare what was written with the expected counts (adds warnings)."""
        for split in sorted(self.planned):
            exp = self.expected.get(split)
            got = self.written.get(split, 0)
            if exp is not None and got != exp:
                self.warn(
                    f"{split}: {got} examples written, the standard set has {exp} "
                    f"({abs(got - exp)} {'fewer' if got < exp else 'more'}); see the issues above and the README "
                    f"layout for {self.dataset}."
                )

    # ---- output ----
    @property
    def problem_count(self) -> int:
        return sum(self.count(k) for k in ("missing", "unpaired", "unreadable", "refused"))

    def render(self) -> str:
        out = [f"== {self.dataset}: validation summary =="]
        if self.source:
            out.append(f"source: {self.source}")
        splits = sorted(set(self.planned) | set(self.written) | set(self.expected))
        if splits:
            out.append(f"  {'split':<16}{'written':>9}{'expected':>10}")
            for s in splits:
                exp = self.expected.get(s)
                got = self.written.get(s, 0)
                flag = "" if exp is None else ("  ok" if got == exp else f"  {got - exp:+d}")
                out.append(f"  {s:<16}{got:>9}{'-' if exp is None else exp:>10}{flag}")
        for kind, title in KINDS.items():
            items = self.of_kind(kind)
            line = f"  {title}: {len(items)}"
            if kind == "converted" and items:
                kinds = collections.Counter(i.detail for i in items)
                line += " (" + "; ".join(f"{d}: {n}" for d, n in kinds.most_common()) + ")"
            out.append(line)
            for i in items[:DETAIL_LINES]:
                out.append("      " + i.line())
            if len(items) > DETAIL_LINES:
                out.append(f"      ... and {len(items) - DETAIL_LINES} more (all listed in prepare_report.json)")
        for n in self.notes:
            out.append(f"  note: {n}")
        for w in self.warnings:
            out.append(f"  WARNING: {w}")
        verdict = (
            "NOTHING WRITTEN"
            if self.failed
            else "OK"
            if not self.warnings and not self.problem_count
            else (f"written with {len(self.warnings)} warning(s) and {self.problem_count} problem file(s) left out")
        )
        out.append(f"  result: {verdict}")
        return "\n".join(out)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "source": self.source,
            "written": dict(self.written),
            "expected": self.expected,
            "counts": {k: self.count(k) for k in KINDS},
            "issues": [dataclasses.asdict(i) for i in self.issues],
            "notes": self.notes,
            "warnings": self.warnings,
            "failed": self.failed,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True)


def first(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
