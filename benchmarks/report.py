"""What the runs measured, and the one table that shows it."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from scenarios import Method


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float
    rate: float | None
    client_kib: int
    server_kib: int | None
    client_cpu: float | None = None
    server_cpu: float | None = None
    net_rate: float | None = None  # work / (wall - the median start-up of the same command)


@dataclass
class Outcome:
    """Every run of one method."""

    method: Method
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return len(self.samples) + len(self.failures)

    def rate(self) -> float | None:
        rates = [sample.rate for sample in self.samples if sample.rate is not None]
        return statistics.median(rates) if rates else None

    def net_rate(self) -> float | None:
        rates = [sample.net_rate for sample in self.samples if sample.net_rate is not None]
        return statistics.median(rates) if rates else None

    def cpu_per_gib(self) -> list[float]:
        """Client + server CPU seconds per GiB of each run (scenario a's rows, in MiB)."""
        if self.method.unit != "MiB/s" or not self.method.work:
            return []
        gib = self.method.work / 1024
        return [
            (s.client_cpu + (s.server_cpu or 0.0)) / gib
            for s in self.samples
            if s.client_cpu is not None
        ]

    def wall(self) -> float | None:
        return statistics.median(s.wall for s in self.samples) if self.samples else None

    def speed(self) -> float | None:
        """What ratios compare: the rate, or 1 / wall time for time-only methods."""
        if self.method.unit:
            return self.rate()
        wall = self.wall()
        return 1 / wall if wall else None


def _reference(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The group's reference: the one marked so, else the first baseline that ran."""
    ran = [outcome for outcome in outcomes if outcome.speed()]
    marked = [outcome for outcome in ran if outcome.method.reference]
    baselines = [outcome for outcome in ran if not outcome.method.name.startswith("ftx")]
    chosen = marked or baselines
    return chosen[0] if chosen else None


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"


def _row(outcome: Outcome, reference: Outcome | None) -> list[str]:
    method = outcome.method
    walls = [sample.wall for sample in outcome.samples]
    rate, speed = outcome.rate(), outcome.speed()
    if not outcome.samples:
        status = f"FAILED {len(outcome.failures)}/{outcome.runs}" if outcome.runs else "not run"
        return [method.name, status, *["-"] * 7]
    rate_text = f"{rate:,.0f} {method.unit}" if rate is not None else "-"
    if outcome.failures:
        rate_text += f" ({len(outcome.failures)}/{outcome.runs} failed)"
    if outcome.warnings:
        rate_text += " !"
    server = [s.server_kib for s in outcome.samples if s.server_kib is not None]
    ref_speed = reference.speed() if reference is not None else None
    if outcome is reference:
        ratio = "1.00 (ref)"
    elif speed and ref_speed:
        ratio = f"{speed / ref_speed:.2f}"
    else:
        ratio = "-"
    net = outcome.net_rate()
    cpu = outcome.cpu_per_gib()
    cpu_text = f"{statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f})" if cpu else "-"
    return [
        method.name,
        rate_text,
        f"{net:,.0f}" if net is not None else "-",
        cpu_text,
        f"{statistics.median(walls):.3f}",
        f"{min(walls):.3f}-{max(walls):.3f}",
        _mib(max(s.client_kib for s in outcome.samples)),
        _mib(max(server) if server else None),
        ratio,
    ]


HEADERS = ("scenario", "method", "rate (median)", "start-up out", "CPU s/GiB (min-max)",
           "wall s", "min-max s", "client RSS", "server RSS", "vs ref")  # fmt: skip


def table(outcomes: Sequence[Outcome]) -> str:
    """One table: a row per method, grouped by scenario, ratios against each group's reference."""
    rows: list[list[str]] = []
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome.method.group, []).append(outcome)
    for group, members in groups.items():
        reference = _reference(members)
        for index, outcome in enumerate(members):
            rows.append([group if index == 0 else "", *_row(outcome, reference)])
    widths = [max(len(row[col]) for row in [list(HEADERS), *rows]) for col in range(len(HEADERS))]
    right = {2, 3, 4, 5, 6, 7, 8, 9}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if col in right else cell.ljust(width)
            for col, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * len(line(["x" * width for width in widths]))
    out = [line(HEADERS), rule]
    previous = None
    for row in rows:
        if row[0] and previous is not None:
            out.append("")
        out.append(line(row))
        previous = row
    out.append(rule)
    return "\n".join(out)


def problems(outcomes: Sequence[Outcome]) -> list[str]:
    """Failures and warnings: one line per method and kind, with up to 3 distinct messages."""
    lines = []
    for outcome in outcomes:
        for kind, messages in (("failed", outcome.failures), ("warning", outcome.warnings)):
            if messages:
                distinct = list(dict.fromkeys(message[:240] for message in messages))
                lines.append(
                    f"{outcome.method.group} / {outcome.method.name}: {kind} in "
                    f"{len(messages)} of {outcome.runs} runs: " + " | ".join(distinct[:3])
                )
    return lines
