"""Fuzzing the decoders (issue 5, deliverable 8): arbitrary bytes, and valid sessions mutated at
the frame, payload, JSON and byte level, into :class:`ftx.framing.FrameDecoder`,
:func:`ftx.protocol.messages.decode_message`, and the client and server protocol state machines
(after a
valid handshake, and before one).

The oracles are those of ``fuzz/fuzz_decoders.py``, whose targets these tests drive with
hypothesis (the runner drives the same targets for as long as you like, by hand):

- nothing but RemoteProtocolError (or a subclass) escapes a decoder;
- FrameDecoder agrees with a reference parser, keeps raising the same error once it failed and
  never sits on a complete frame;
- what decode_message accepts, encode_message sends back unchanged;
- a protocol state machine that raised RemoteProtocolError stays failed.

Example counts are modest to keep the suite fast; ``FTX_FUZZ_EXAMPLES=20000 pytest
tests/test_fuzz.py`` runs them longer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx.errors import RemoteProtocolError
from ftx.protocol import ClientProtocol, ServerProtocol
from ftx.protocol.messages import Kind

RUNNER_PATH = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_decoders.py"


def load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_decoders", RUNNER_PATH)
    assert spec is not None, RUNNER_PATH
    assert spec.loader is not None, RUNNER_PATH
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


runner = load_runner()

EXAMPLES = int(os.environ.get("FTX_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

seeds = st.integers(0, 2**32 - 1)
arbitrary_payloads = st.lists(st.binary(max_size=80), max_size=12)


@st.composite
def mutated(draw: st.DrawFn, base: list[bytes]) -> list[bytes]:
    """``base`` after the runner's mutations, driven by a hypothesis-controlled random."""
    rng = draw(st.randoms(use_true_random=False))
    return list(runner.mutate_payloads(base, rng, runner.all_seed_payloads()))


def check(target: str, payloads: list[bytes], seed: int, *, latch: bool = False) -> None:
    case = runner.Case(payloads, seed)
    if runner.TARGETS[target].stream:
        case.stream = b"".join(runner.frame(data) for data in payloads)
    _, finding = runner.run_case(runner.TARGETS[target], case, latch)
    if finding is not None:
        pytest.fail(f"[{target}] {finding.oracle}: {finding.detail}", pytrace=False)


# ----------------------------------------------------------------------------- framing


@FUZZ
@given(stream=st.binary(max_size=300), seed=seeds)
def test_frame_decoder_on_arbitrary_bytes(stream: bytes, seed: int) -> None:
    case = runner.Case([], seed, stream)
    _, finding = runner.run_case(runner.TARGETS["framing"], case, True)
    assert finding is None, f"{finding.oracle}: {finding.detail}"


@FUZZ
@given(rng=st.randoms(use_true_random=False), seed=seeds)
def test_frame_decoder_on_damaged_sessions(rng: random.Random, seed: int) -> None:
    base = runner.server_session() if rng.random() < 0.5 else runner.client_session()
    payloads = runner.mutate_payloads(base, rng, runner.all_seed_payloads())
    stream = runner.mutate_stream(b"".join(runner.frame(p) for p in payloads), rng)
    case = runner.Case(payloads, seed, stream)
    _, finding = runner.run_case(runner.TARGETS["framing"], case, True)
    assert finding is None, f"{finding.oracle}: {finding.detail}"


# ---------------------------------------------------------------------------- messages


@FUZZ
@given(payloads=arbitrary_payloads)
def test_decode_message_on_arbitrary_bytes(payloads: list[bytes]) -> None:
    check("messages", payloads, 0)


@FUZZ
@given(payloads=mutated(runner.all_seed_payloads()))
def test_decode_message_on_mutated_valid_payloads(payloads: list[bytes]) -> None:
    check("messages", payloads, 0)


MEMBERS = ["id", "path", "offset", "identity", "digest", "size", "mtime_ns", "mode", "code"]
MEMBERS += ["message", "count", "entries", "protocol", "versions", "features", "max_frame_size"]
MEMBERS += ["agent", "name", "type"]
json_scalars = st.one_of(
    st.sampled_from(runner.INTERESTING_VALUES),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(MEMBERS), inner, max_size=5)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    kind=st.sampled_from([kind for kind in Kind if kind != Kind.DATA]),
    body=st.dictionaries(st.sampled_from(MEMBERS), json_values, max_size=8),
    ascii_only=st.booleans(),
)
def test_decode_message_on_json_members_of_every_type(
    kind: Kind, body: dict[str, Any], ascii_only: bool
) -> None:
    text = json.dumps(body, ensure_ascii=ascii_only, allow_nan=True)
    check("messages", [bytes([kind]) + text.encode("utf-8", "surrogatepass")], 0)


# ------------------------------------------------------------ state machines, handshake done

SERVER_HELLO = runner.server_session()[0]
CLIENT_HELLO = runner.client_session()[0]
answers = arbitrary_payloads | mutated(runner.server_session()[1:])
requests = arbitrary_payloads | mutated(runner.client_session()[1:])


@FUZZ
@given(payloads=answers, seed=seeds)
def test_client_protocol_after_the_handshake(payloads: list[bytes], seed: int) -> None:
    check("client", [SERVER_HELLO, *payloads], seed)


@FUZZ
@given(payloads=requests, seed=seeds)
def test_server_protocol_after_the_handshake(payloads: list[bytes], seed: int) -> None:
    check("server", [CLIENT_HELLO, *payloads], seed)


@FUZZ
@given(payloads=arbitrary_payloads | mutated(runner.server_session()), seed=seeds)
def test_client_protocol_from_the_start(payloads: list[bytes], seed: int) -> None:
    check("client", payloads, seed)


@FUZZ
@given(payloads=arbitrary_payloads | mutated(runner.client_session()), seed=seeds)
def test_server_protocol_from_the_start(payloads: list[bytes], seed: int) -> None:
    check("server", payloads, seed)


@FUZZ
@given(
    rng=st.randoms(use_true_random=False),
    seed=seeds,
    damage=st.booleans(),
)
def test_client_reading_a_damaged_stream(rng: random.Random, seed: int, damage: bool) -> None:
    """Bytes as the client reads them from a socket: framing, then the protocol."""
    payloads = runner.mutate_payloads(runner.server_session(), rng, runner.all_seed_payloads())
    stream = b"".join(runner.frame(p) for p in payloads)
    case = runner.Case(payloads, seed, runner.mutate_stream(stream, rng) if damage else stream)
    _, finding = runner.run_case(runner.TARGETS["pipeline"], case, False)
    assert finding is None, f"{finding.oracle}: {finding.detail}"


# ------------------------------------------------------------------ failed stays failed

# Payloads that break the protocol wherever they come.
BAD = st.sampled_from(
    [
        b"",
        b"\x05{}",
        b"\x7f",
        b"\x20not json",
        b"\x21" + b"x" * 100,  # DATA beyond what is due, or outside a file
        b'\x22{"id":99,"digest":null}',
        b'\x10{"id":1,"path":"twice"}',
    ]
)


def stays_failed(side: ClientProtocol | ServerProtocol, session: list[bytes], bad: bytes) -> None:
    """Feed ``session`` with ``bad`` in it: from the first error on, every payload must be
    refused, the valid ones that follow included."""
    failed: RemoteProtocolError | None = None
    for data in session:
        try:
            message = side.receive(data)
        except RemoteProtocolError as exc:
            failed = failed or exc
            continue
        assert failed is None, (
            f"{message!r} was accepted after the state machine failed with {failed!r} "
            f"(sequence: {[d[:40] for d in session]})"
        )
    assert failed is not None, f"{bad!r} was not refused"


@FUZZ
@given(bad=BAD | st.binary(max_size=10), where=st.integers(1, 20))
def test_a_failed_client_protocol_stays_failed(bad: bytes, where: int) -> None:
    session = runner.server_session()[:-1]  # without the final connection-level ERROR
    where = min(where, len(session))
    session.insert(where, bad)
    client = runner.new_client()
    try:
        stays_failed(client, session, bad)
    except AssertionError as exc:
        if "was not refused" in str(exc):
            return  # this payload happens to be valid here: nothing to check
        raise


@FUZZ
@given(bad=BAD | st.binary(max_size=10), where=st.integers(1, 20))
def test_a_failed_server_protocol_stays_failed(bad: bytes, where: int) -> None:
    session = runner.client_session()
    where = min(where, len(session))
    session.insert(where, bad)
    server = ServerProtocol()
    hello = server.receive(session[0])
    assert hello is not None
    server.send(server.hello_reply())
    try:
        stays_failed(server, session[1:], bad)
    except AssertionError as exc:
        if "was not refused" in str(exc):
            return
        raise


# ------------------------------------------------------------------------------ the runner


def test_the_fuzz_runner_runs_every_target_and_finds_nothing_else(tmp_path: Path) -> None:
    """A short, seeded run of fuzz/fuzz_decoders.py (without the latch oracle, which the two
    tests above check): every target runs, and nothing is found."""
    summary = runner.fuzz(iterations=300, seed=20261125, check_latch=False, findings_dir=tmp_path)
    assert set(summary.stats) == set(runner.TARGETS)
    assert all(stats.runs == 300 for stats in summary.stats.values())
    assert not summary.findings, summary.format()
    assert "no findings" in summary.format()
    assert not list(tmp_path.iterdir())


def test_the_fuzz_runner_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = runner.main(
        ["--seconds", "0.3", "--seed", "1", "--no-latch", "--findings", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ftx fuzz: " in out
    for name in runner.TARGETS:
        assert name in out


def test_a_saved_finding_replays(tmp_path: Path) -> None:
    """Findings are saved so that they can be run again (here: a latch finding, if the state
    machines still have it; otherwise there is nothing to replay)."""
    summary = runner.fuzz(["client"], iterations=400, seed=5, findings_dir=tmp_path)
    saved = sorted(tmp_path.glob("*.json"))
    assert len(saved) == len(summary.findings)
    for path in saved:
        assert runner.replay(path) == 1
