"""Benchmark ftx against baselines measured in the same run; print one table.

    python benchmarks/run.py              # everything, 3 runs (about 10-15 minutes)
    python benchmarks/run.py --quick      # small sizes, 1 run: a smoke test (well under 1 min)
    python benchmarks/run.py --scenario a,c --runs 5 --size 256M

Run it with the Python that has ftx installed. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import baselines as bl
import procs
import scenarios as sc
from report import Outcome, Sample, problems, table

REPO = Path(__file__).resolve().parent.parent


def parse_size(text: str) -> int:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", text.strip().lower())
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 1G, 256M, 4096")
    number, unit = found.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit or " "))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="small sizes and 1 run: a smoke test")
    add("--runs", type=int, help="runs of each method, interleaved (default 3; --quick 1)")
    add("--scenario", default="a,b,c,d", help="which of a,b,c,d,e to run (default: a-d)")
    add("--size", type=parse_size, help="scenario a's file size (default 1G; --quick 64M)")
    add("--files", type=int, help="scenario b's number of files (default 10000; --quick 500)")
    add("--dirs", type=int, help="scenario b's number of directories (default 100; --quick 10)")
    add("--connections", type=int, default=8, help="scenario b's ftx connections (default 8)")
    add("--requests", type=int, help="scenario c's downloads (default 1000; --quick 100)")
    add("--concurrency", help="scenario c's levels (default 200,1000; --quick 20,100)")
    add("--wrk-seconds", type=float, help="scenario c's wrk duration (default 5; --quick 1)")
    add("--startup-runs", type=int, help="scenario d's runs (default 10; --quick 3)")
    add("--rss-size", type=parse_size, help="scenario a: add rows with a file this big (e.g. 4G)")
    add("--method", action="append", default=[], help="only methods whose name contains this")
    add("--tmpdir", type=Path, help="where to make data and downloads (default: the system's)")
    add("--timeout", type=float, default=900.0, help="seconds before a client is killed")
    add("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "runs": 1 if quick else 3,
        "size": 64 << 20 if quick else 1 << 30,
        "files": 500 if quick else 10_000,
        "dirs": 10 if quick else 100,
        "requests": 100 if quick else 1000,
        "concurrency": "20,100" if quick else "200,1000",
        "wrk_seconds": 1.0 if quick else 5.0,
        "startup_runs": 3 if quick else 10,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.scenario = [key.strip() for key in args.scenario.split(",") if key.strip()]
    if not set(args.scenario) <= set("abcde"):
        parser.error("--scenario takes a comma-separated list of a, b, c, d, e")
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def raise_open_files_limit() -> None:
    """Scenario c holds 1,000+ sockets and files at once, in the clients and the servers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fast_directory(tmp: Path) -> Path:
    """A tmpfs directory for the downloads where the disk should not count, if there is one."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="ftx-bench-", dir=shm))
    return tmp


def compile_ftx() -> int:
    """Compile ftx's modules to bytecode where it is missing or stale; return how many.

    ``pip install .`` (README's way) compiles them at install time. An editable install where
    PYTHONDONTWRITEBYTECODE is set (as on the VMs these runs were made on) never writes them:
    every ``ftx`` process would then compile all of ftx again (about 0.1 s of its start-up),
    which no installed copy pays.
    """
    done = subprocess.run([bl.PYTHON, "-c", _COMPILE_FTX], capture_output=True, text=True)
    return int(done.stdout.strip() or 0)


_COMPILE_FTX = """
import compileall, importlib.util, pathlib
root = pathlib.Path(importlib.util.find_spec("ftx").origin).parent
def fresh(p):
    c = pathlib.Path(importlib.util.cache_from_source(str(p)))
    return c.exists() and c.stat().st_mtime >= p.stat().st_mtime
missing = [p for p in root.rglob("*.py") if not fresh(p)]
for p in missing:
    compileall.compile_file(p, quiet=2)
print(len(missing))
"""


def describe_environment(tools: dict[str, str | None], tmp: Path) -> list[str]:
    def output(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except OSError:
            return "?"
        return (done.stdout.strip() or done.stderr.strip() or "?").splitlines()[0]

    commit = output(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    version = output([*bl.ftx_command(), "--version"])
    present = [name for name, path in tools.items() if path]
    missing = [name for name, path in tools.items() if not path]
    return [
        f"ftx benchmarks, {datetime.now():%Y-%m-%d %H:%M}, {version} (git {commit}), "
        f"Python {platform.python_version()}",
        f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at "
        f"start, data in {tmp}",
        f"tools present: {', '.join(present) or 'none'}; "
        f"missing, so skipped: {', '.join(missing) or 'none'}",
    ]


def build(args: argparse.Namespace, settings: sc.Settings) -> list[sc.Scenario]:
    builders = {
        "a": lambda: sc.big_file(settings),
        "b": lambda: sc.small_files(settings),
        "c": lambda: sc.concurrent(settings),
        "d": lambda: sc.startup(args.startup_runs),
    }
    built = []
    for key in args.scenario:
        say(f"making the data of scenario {key} ...")
        scenario = builders[key]()
        scenario.drop_unavailable(settings.available())
        if args.method:
            scenario.methods = [
                m for m in scenario.methods if any(part in m.name for part in args.method)
            ]
        built.append(scenario)
    return built


def slug(method: sc.Method) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method.group} {method.name}".lower()).strip("-")


def run_directory(method: sc.Method, settings: sc.Settings, index: int) -> Path:
    """Where the ``index``-th run of ``method`` writes its output."""
    return (method.out_base or settings.tmp / "out") / slug(method) / f"run{index}"


def run_once(
    method: sc.Method, settings: sc.Settings, index: int, timeout: float, *, keep: bool = False
) -> Outcome:
    """Run ``method`` once; an Outcome holding this one sample, failure or warning. The output
    is deleted afterwards, unless ``keep``."""
    outcome = Outcome(method)
    run_dir = run_directory(method, settings, index)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    try:
        if method.prepare is not None:
            method.prepare(run_dir)
        server = None
        if method.server is not None:
            log = settings.tmp / "logs" / f"{slug(method)}.log"
            server = procs.start_server(method.server, log)
        try:
            server_cpu = server.cpu_seconds() if server is not None else None
            run = procs.run_client(
                method.argv(server.port if server else 0, run_dir), timeout=timeout
            )
            if server is not None and server_cpu is not None:
                run.server_cpu = server.cpu_seconds() - server_cpu
        finally:
            server_kib = server.stop() if server is not None else None
        if run.returncode != 0:
            why = "timed out" if run.timed_out else f"exit code {run.returncode}"
            why += f" after {run.wall:.1f} s"
            tail = (run.stderr.strip() or run.stdout.strip())[-300:].replace("\n", " | ")
            outcome.failures.append(f"{why}: {tail}")
            return outcome
        warning = method.check(run_dir, run) if method.check is not None else None
        if warning:
            outcome.warnings.append(warning)
        rate = method.rate(run) if method.rate else method.work / run.wall if method.unit else None
        startup = settings.startups.get(tuple(method.startup)) if method.startup else None
        net = run.wall - startup if startup is not None else None
        net_rate = method.work / net if method.unit and net and net > 0 else None
        outcome.samples.append(
            Sample(run.wall, rate, run.maxrss_kib, server_kib, run.cpu, run.server_cpu, net_rate)
        )
    except (OSError, RuntimeError) as exc:
        outcome.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return outcome


def run_scenario(
    scenario: sc.Scenario, settings: sc.Settings, runs: int, timeout: float, into: list[Outcome]
) -> None:
    """Every method of ``scenario``, interleaved: A B C, then each further round in another
    order (shuffled, the same way on every run of the benchmark). A method that always ran
    right after the same one would carry what that one left behind (memory or disk blocks
    just freed), round after round; a rotation (B C A) would keep those neighbours."""
    outcomes = [Outcome(method) for method in scenario.methods]
    into.extend(outcomes)
    runs = scenario.runs or runs
    try:
        for index in range(runs):
            order = list(outcomes)
            if index:
                random.Random(index).shuffle(order)
            for outcome in order:
                one = run_once(outcome.method, settings, index, timeout, keep=scenario.keep_outputs)
                outcome.samples += one.samples
                outcome.failures += one.failures
                outcome.warnings += one.warnings
                result = f"{one.samples[0].wall:.3f} s" if one.samples else "FAILED"
                say(f"  [{scenario.key} {index + 1}/{runs}] {outcome.method.group} / "
                    f"{outcome.method.name}: {result}")  # fmt: skip
    finally:
        if scenario.keep_outputs:
            for outcome in outcomes:
                for index in range(runs):
                    shutil.rmtree(run_directory(outcome.method, settings, index), True)


def measure_startups(
    scenarios: Sequence[sc.Scenario], settings: sc.Settings, runs: int, timeout: float
) -> None:
    """The median wall time of each method's start-up command (``Method.startup``), run
    ``runs`` times, interleaved, into ``settings.startups``."""
    commands = list(
        dict.fromkeys(tuple(m.startup) for s in scenarios for m in s.methods if m.startup)
    )
    walls: dict[tuple[str, ...], list[float]] = {command: [] for command in commands}
    for index in range(runs):
        order = list(commands)
        random.Random(index).shuffle(order)
        for command in order:
            run = procs.run_client(command, timeout=timeout)
            if run.returncode == 0:
                walls[command].append(run.wall)
    for command, measured in walls.items():
        if measured:
            settings.startups[command] = statistics.median(measured)
            say(f"  start-up of {' '.join(command[-2:])}: {settings.startups[command]:.3f} s")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if "e" in args.scenario:  # the framing layer alone: its own runner and table
        import framing_bench

        framing_bench.main(["--runs", str(max(args.runs, 5))])
        args.scenario.remove("e")
        if not args.scenario:
            return 0
    try:
        subprocess.run([*bl.ftx_command(), "--version"], capture_output=True, check=True)
        subprocess.run([bl.PYTHON, "-c", "import ftx, trio"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        say(f"benchmarks: run this with a Python that has ftx installed (not {bl.PYTHON})")
        return 2
    compiled = compile_ftx()
    raise_open_files_limit()
    tools = bl.find_tools()
    tmp = Path(tempfile.mkdtemp(prefix="ftx-bench-", dir=args.tmpdir))
    fast = tmp
    header: list[str] = []
    outcomes: list[Outcome] = []
    notes: list[str] = []
    started = time.monotonic()
    status = 0
    try:
        fast = fast_directory(tmp)
        settings = sc.Settings(
            tmp=tmp,
            fast=fast,
            tools=tools,
            size=args.size,
            files=args.files,
            dirs=args.dirs,
            connections=args.connections,
            requests=args.requests,
            concurrency=tuple(int(level) for level in args.concurrency.split(",")),
            wrk_seconds=args.wrk_seconds,
            ftx_features=bl.ftx_features(),
            rss_size=args.rss_size,
        )
        header = describe_environment(tools, tmp)
        if compiled:
            header.append(f"ftx's bytecode was missing: compiled {compiled} modules first")
        (tmp / "logs").mkdir()
        scenarios = build(args, settings)
        for scenario in scenarios:
            notes += scenario.notes
        measure_startups(scenarios, settings, args.startup_runs, args.timeout)
        for scenario in scenarios:
            run_scenario(scenario, settings, args.runs, args.timeout, outcomes)
    except KeyboardInterrupt:
        notes.append("INTERRUPTED (Ctrl-C): the table shows the runs done so far")
        status = 130
    finally:
        procs.stop_all()
        if args.keep:
            say(f"kept {tmp}" + (f" and {fast}" if fast != tmp else ""))
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            if fast != tmp:
                shutil.rmtree(fast, ignore_errors=True)
    print("\n".join(header))
    print(f"median of {args.runs} runs (d: {args.startup_runs}), methods interleaved and shuffled, "
          f"{time.monotonic() - started:.0f} s in all; rate = work / client wall time unless "
          f"noted; RSS = peak VmHWM of the client / the server process(es); 'vs ref' = speed "
          f"relative to the group's ref row (higher is faster)")  # fmt: skip
    print(table(outcomes))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if settings_startups := getattr(locals().get("settings"), "startups", None):
        ups = "; ".join(f"{' '.join(c[-2:])} {w:.3f} s" for c, w in settings_startups.items())
        print(f"start-ups (median of {args.startup_runs}): {ups}")
    for line in notes + problems(outcomes):
        print(f"- {line}")
    return status


if __name__ == "__main__":
    sys.exit(main())
