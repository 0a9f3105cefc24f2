"""circom's C++ witness generator next to the WASM one (settlement.artifacts, settlement.prover).

One small shape only (the circuit tests' Batch(4, 2, 2)): its first build takes minutes, and
it is cached by content hash and toolchain like the keys. The C++ generator must compute the
WASM one's witness byte for byte, refuse what the WASM one refuses, be used only once
validated, and be skipped (WASM instead) without its toolchain or when switched off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from settlement.artifacts import (
    CircuitArtifacts,
    NativeWitness,
    build_artifacts,
    build_native_witness,
    find_native_witness,
)
from settlement.prover import Prover, WitnessError, compute_witness
from test_batch_circuit import I, N, P, PAYEES, build_inputs, intents, valid_inputs, with_mandates

pytestmark = pytest.mark.circuit

MISSING_COMPILER = "/nonexistent/g++"


@pytest.fixture(scope="module")
def native(batch_artifacts: CircuitArtifacts) -> NativeWitness:
    built = build_native_witness(batch_artifacts)
    # make test installs the toolchain (Makefile: native-toolchain).
    assert built is not None, "g++, libgmp-dev, nlohmann-json3-dev, nasm and make are needed"
    return built


def _unsatisfied() -> dict[str, dict]:
    over_cap = build_inputs(intents(), with_mandates(m0=dict(amount=1_001)))  # intent 0's cap is 1,000
    wrong_payout = valid_inputs()
    wrong_payout["payeeWord"] = [PAYEES[0] + (101 << 160), wrong_payout["payeeWord"][1]]
    return {"amount_over_cap": over_cap, "public_payout_off_by_one": wrong_payout}


def test_native_witness_equals_wasm_byte_for_byte(batch_artifacts: CircuitArtifacts, native: NativeWitness,
                                                  tmp_path: Path) -> None:
    inputs = valid_inputs()  # real EdDSA signatures, two intents, an allowlist path, a padding slot
    compute_witness(batch_artifacts, inputs, tmp_path / "wasm.wtns")
    compute_witness(batch_artifacts, inputs, tmp_path / "native.wtns", native=native)
    wasm = (tmp_path / "wasm.wtns").read_bytes()
    assert wasm[:4] == b"wtns" and len(wasm) > 25_000 * 32  # about 30,000 wires of 32 bytes
    assert (tmp_path / "native.wtns").read_bytes() == wasm


def test_prover_uses_native_and_its_proof_verifies(batch_artifacts: CircuitArtifacts, native: NativeWitness) -> None:
    prover = Prover(batch_artifacts)
    assert prover.witness_generator == "native"
    proof = prover.prove(valid_inputs())
    assert prover.verify(proof)
    forged = dataclasses.replace(proof, public_inputs=(proof.public_inputs[0] + 1, *proof.public_inputs[1:]))
    assert not prover.verify(forged)


@pytest.mark.parametrize("case", sorted(_unsatisfied()))
@pytest.mark.parametrize("generator", ["native", "wasm"])
def test_unsatisfied_inputs_raise_witness_error_on_both_paths(
    batch_artifacts: CircuitArtifacts, native: NativeWitness, tmp_path: Path, generator: str, case: str
) -> None:
    wtns = tmp_path / "witness.wtns"
    with pytest.raises(WitnessError) as info:
        compute_witness(batch_artifacts, _unsatisfied()[case], wtns, native=native if generator == "native" else None)
    assert not wtns.exists()
    # Each generator names where it stopped: C++ asserts print, the WASM trace names the template.
    expected = "Failed assert in template" if generator == "native" else "Error in template"
    assert expected in info.value.stderr


def test_manifest_records_the_validation(batch_artifacts: CircuitArtifacts, native: NativeWitness) -> None:
    assert native.directory.parent == batch_artifacts.directory
    assert native.directory.name == f"native-{native.toolchain}"
    assert native.binary.is_file() and os.access(native.binary, os.X_OK)
    assert native.binary.with_suffix(".dat").is_file()  # read from beside the binary
    manifest = json.loads((native.directory / "manifest.json").read_text())
    assert manifest["hash"] == batch_artifacts.hash
    assert manifest["validation"]["identicalToWasm"] is True
    assert manifest["validation"]["refusesUnsatisfied"] is True
    assert {"compiler", "gmp", "nlohmann-json", "nasm", "circom2"} <= set(manifest["toolchain"])
    # Only the generator and its constants stay: no sources, objects or leftovers.
    assert sorted(p.name for p in native.directory.iterdir()) == ["manifest.json", "witness", "witness.dat"]
    assert not [p for p in batch_artifacts.directory.iterdir() if p.name.startswith(".native-")]


def test_second_build_builds_nothing(batch_artifacts: CircuitArtifacts, native: NativeWitness,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    before = native.binary.stat().st_mtime_ns
    assert build_native_witness(batch_artifacts) == native
    assert build_artifacts(N, I, P, native_witness=True) == batch_artifacts
    assert find_native_witness(batch_artifacts) == native
    assert "compiling" not in capsys.readouterr().err
    assert native.binary.stat().st_mtime_ns == before


def test_missing_toolchain_falls_back_to_wasm(batch_artifacts: CircuitArtifacts, native: NativeWitness,
                                             capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert build_native_witness(batch_artifacts, compiler=MISSING_COMPILER) is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{MISSING_COMPILER} not found" in lines[0] and "WASM" in lines[0]
    assert find_native_witness(batch_artifacts, compiler=MISSING_COMPILER) is None
    prover = Prover(batch_artifacts, compiler=MISSING_COMPILER)
    assert prover.witness_generator == "wasm"
    prover.witness(valid_inputs(), tmp_path / "witness.wtns")
    assert (tmp_path / "witness.wtns").is_file()


def test_switched_off_by_environment(batch_artifacts: CircuitArtifacts, native: NativeWitness,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AEP2_NATIVE_WITNESS", "0")
    assert Prover(batch_artifacts).witness_generator == "wasm"
    assert find_native_witness(batch_artifacts) is None
    assert build_native_witness(batch_artifacts) is None
    assert "AEP2_NATIVE_WITNESS=0" in capsys.readouterr().err


def test_unvalidated_generator_is_never_used(batch_artifacts: CircuitArtifacts, native: NativeWitness,
                                            tmp_path: Path) -> None:
    # A generator directory without its manifest (an interrupted or refused build) is ignored.
    elsewhere = dataclasses.replace(batch_artifacts, directory=tmp_path)
    copy = tmp_path / native.directory.name
    copy.mkdir()
    for name in ("witness", "witness.dat"):
        (copy / name).write_bytes((native.directory / name).read_bytes())
    assert find_native_witness(elsewhere) is None
    (copy / "manifest.json").write_text((native.directory / "manifest.json").read_text())
    assert find_native_witness(elsewhere) == NativeWitness(copy, native.toolchain)


def _fake_generator(directory: Path, script: str) -> NativeWitness:
    directory.mkdir()
    binary = directory / "witness"
    binary.write_text("#!/bin/sh\n" + script)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return NativeWitness(directory, "fake")


def test_validation_refuses_a_generator_that_disagrees_or_accepts_anything(
    batch_artifacts: CircuitArtifacts, native: NativeWitness, tmp_path: Path
) -> None:
    from settlement.artifacts import BuildError, _padding_inputs, _validate_native

    genuine = tmp_path / "padding.wtns"
    wrong = _fake_generator(tmp_path / "wrong", 'printf wtns > "$2"\n')
    with pytest.raises(BuildError, match="differs from the WASM"):
        _validate_native(batch_artifacts, wrong)
    # Right on the padding batch, but writes it for every input (as an -DNDEBUG build would).
    compute_witness(batch_artifacts, _padding_inputs(N, I, P), genuine)
    lenient = _fake_generator(tmp_path / "lenient", f'cp "{genuine}" "$2"\n')
    with pytest.raises(BuildError, match="accepted an unsatisfied constraint"):
        _validate_native(batch_artifacts, lenient)

