"""Build and cache the batch circuit's artifacts: R1CS, witness generator, keys, verifier.

``build_artifacts(n, i, p)`` compiles ``Batch(n, i, p, D)`` (circuits/batch.circom, D the payee tree depth) with circom 2,
runs the Groth16 setup and exports the Solidity verifier, all into one cache directory per
circuit version::

    <cache>/<hash>/
        main.circom              generated main component (public inputs per PROTOCOL.md §5)
        main.r1cs
        main_js/                 circom's Node witness generator (generate_witness.js, main.wasm)
        proving_key.bin          groth16py ProvingKey.save
        verification_key.json    snarkjs-format verifying key
        BatchVerifier.sol        snarkjs-style Solidity verifier plus batchShape() (generated)
        SETUP.txt                where the keys came from (development setup or ceremony zkey)
        manifest.json            written last: its presence marks a complete build
        native-<toolchain>/      circom's C++ witness generator, when built (see below)

``<cache>`` is ``$AEP2_CACHE_DIR`` or ``~/.cache/aep2-gateway/circuits``; ``<hash>`` covers the
circuit sources, the circomlib version, ``n, i, p`` and the groth16py version (and the
ceremony ``.zkey`` when one is used), so a changed circuit never reuses stale keys. Builds
happen in a temporary directory renamed into place under an ``fcntl`` lock, so concurrent
processes (pytest workers, a gateway and a processor) build at most once.

Without ``AEP2_ZKEY`` the keys come from groth16py's single-party development setup, which is
UNSAFE FOR PRODUCTION: whoever ran it knows the toxic waste and can forge proofs. With
``AEP2_ZKEY=<path to a snarkjs ceremony .zkey>`` the keys are imported from the ceremony
instead; the ``.zkey`` must have been made from the very ``main.r1cs`` this module compiles.

Native witness generator: with g++, GMP, nlohmann-json, nasm and make present (Debian:
``g++ libgmp-dev nlohmann-json3-dev nasm make``, x86-64), ``build_artifacts(...,
native_witness=True)`` or ``build_native_witness(artifacts)`` also compiles the circuit with
circom's ``--c`` and builds the C++ generator, once per build and toolchain, into
``<cache>/<hash>/native-<toolchain>/`` (``<toolchain>`` hashes the compiler, nasm, GMP,
nlohmann-json and circom versions; the keys are untouched, as both generators compute the
same witness for the same ``.r1cs``). Before it is renamed into place, its witness of an
all-padding batch must equal the WASM generator's byte for byte; its ``manifest.json``
records that. It is built without ``-DNDEBUG``: circom's asserts are what refuse an
unsatisfied constraint. Without the toolchain, or with ``AEP2_NATIVE_WITNESS=0``, nothing is
built and the WASM generator is used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import groth16py

from aep2.payees import PAYEE_TREE_DEPTH

from .encoding import padding_signature

__all__ = [
    "CircuitArtifacts",
    "BuildError",
    "NativeWitness",
    "build_artifacts",
    "build_native_witness",
    "find_native_witness",
    "native_witness_enabled",
    "NATIVE_WITNESS_ENV",
    "artifact_hash",
    "default_cache_dir",
    "PROJECT_ROOT",
    "VERIFIER_CONTRACT",
    "SOLIDITY_PRAGMA",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CIRCUITS_DIR = PROJECT_ROOT / "circuits"
NODE_MODULES = PROJECT_ROOT / "node_modules"
CIRCOM = NODE_MODULES / ".bin" / "circom2"

VERIFIER_CONTRACT = "BatchVerifier"
_GROTH16_CONTRACT = "Groth16BatchVerifier"
# solc-js 0.8.37 is the project's compiler (docs: shared TOOLCHAIN); keep the range open upward.
SOLIDITY_PRAGMA = "^0.8.20"

_MANIFEST = "manifest.json"
_FORMAT = 2  # bump when the directory layout changes
_NATIVE_FORMAT = 1  # bump when the native directory's layout or build changes
# circom names the C++ outputs after the main file; "main" would clash with its own main.cpp.
_NATIVE_NAME = "witness"
NATIVE_WITNESS_ENV = "AEP2_NATIVE_WITNESS"


class BuildError(RuntimeError):
    """Compiling the circuit or running the setup failed; the message carries the tool's output."""


@dataclass(frozen=True)
class CircuitArtifacts:
    """Paths to one built ``Batch(n, i, p)`` circuit and its keys (all inside ``directory``)."""

    directory: Path
    r1cs: Path
    wasm_dir: Path  # holds generate_witness.js, witness_calculator.js and main.wasm
    proving_key: Path
    verifying_key: Path  # snarkjs verification_key.json
    solidity_verifier: Path
    n: int
    i: int
    p: int
    constraints: int
    hash: str
    development_setup: bool  # True: single-party setup, UNSAFE FOR PRODUCTION

    @property
    def wasm(self) -> Path:
        """The circuit's witness-calculator WebAssembly module."""
        return self.wasm_dir / "main.wasm"

    @property
    def generate_witness_js(self) -> Path:
        """circom's Node entry point: ``node generate_witness.js main.wasm in.json out.wtns``."""
        return self.wasm_dir / "generate_witness.js"

    def wasm_witness_command(self, inputs_json: Path, wtns: Path, *, node: str = "node") -> list[str]:
        """The command that writes the witness of ``inputs_json`` to ``wtns`` with the WASM
        generator; it exits non-zero (and writes no ``wtns``) when a constraint does not hold."""
        return [node, str(self.generate_witness_js), str(self.wasm), str(inputs_json), str(wtns)]

    @property
    def n_public(self) -> int:
        """Number of public inputs: ``1 + 2·I + P`` (PROTOCOL.md §5)."""
        return 1 + 2 * self.i + self.p

    @classmethod
    def load(cls, directory: Path) -> CircuitArtifacts:
        """Open a complete build directory (one with a ``manifest.json``)."""
        manifest = json.loads((directory / _MANIFEST).read_text())
        return cls(
            directory=directory,
            r1cs=directory / "main.r1cs",
            wasm_dir=directory / "main_js",
            proving_key=directory / "proving_key.bin",
            verifying_key=directory / "verification_key.json",
            solidity_verifier=directory / f"{VERIFIER_CONTRACT}.sol",
            n=manifest["n"],
            i=manifest["i"],
            p=manifest["p"],
            constraints=manifest["constraints"],
            hash=manifest["hash"],
            development_setup=manifest["developmentSetup"],
        )


@dataclass(frozen=True)
class NativeWitness:
    """circom's C++ witness generator of one artifact build, validated against the WASM one.

    ``directory`` (``<cache>/<hash>/native-<toolchain>``) holds the binary, the ``.dat`` of
    constants it reads from beside itself, and a ``manifest.json`` with the toolchain's
    versions and the validation (sha256 of both generators' witness of an all-padding batch).
    """

    directory: Path
    toolchain: str  # the 12 hex digits naming the toolchain in the directory's name

    @property
    def binary(self) -> Path:
        """The executable; ``<binary>.dat`` must stay beside it."""
        return self.directory / _NATIVE_NAME

    def command(self, inputs_json: Path, wtns: Path) -> list[str]:
        """The command that writes the witness of ``inputs_json`` to ``wtns``. An unsatisfied
        constraint prints ``Failed assert in template/function …`` on stdout and aborts
        (SIGABRT, no ``wtns``)."""
        return [str(self.binary), str(inputs_json), str(wtns)]


def native_witness_enabled() -> bool:
    """False when ``$AEP2_NATIVE_WITNESS`` is ``0``: neither build nor use the C++ generator."""
    return os.environ.get(NATIVE_WITNESS_ENV, "1").strip() != "0"


def default_cache_dir() -> Path:
    """``$AEP2_CACHE_DIR`` or ``~/.cache/aep2-gateway/circuits``."""
    env = os.environ.get("AEP2_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "aep2-gateway" / "circuits"


def _circomlib_version() -> str:
    package = NODE_MODULES / "circomlib" / "package.json"
    return str(json.loads(package.read_text())["version"])


def _zkey_path() -> Path | None:
    env = os.environ.get("AEP2_ZKEY")
    return Path(env).expanduser() if env else None


def artifact_hash(n: int, i: int, p: int) -> str:
    """The cache key of ``Batch(n, i, p)``: 16 hex digits of sha256 over everything it depends on."""
    h = hashlib.sha256()
    for source in sorted(CIRCUITS_DIR.glob("*.circom")):
        h.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    h.update(f"circomlib={_circomlib_version()}\0".encode())
    h.update(f"n={n},i={i},p={p},d={PAYEE_TREE_DEPTH}\0".encode())
    h.update(f"groth16py={groth16py.__version__}\0".encode())
    h.update(f"format={_FORMAT}\0".encode())
    zkey = _zkey_path()
    if zkey is not None:
        h.update(b"zkey=" + hashlib.sha256(zkey.read_bytes()).digest())
    return h.hexdigest()[:16]


def build_artifacts(
    n: int,
    i: int,
    p: int,
    *,
    cache_dir: Path | str | None = None,
    progress: bool = True,
    native_witness: bool = False,
) -> CircuitArtifacts:
    """Compile ``Batch(n, i, p)`` and set up its keys, or reuse the cached build.

    Without ``$AEP2_ZKEY`` this runs groth16py's single-party development setup:
    UNSAFE FOR PRODUCTION (the process that ran it could forge proofs). With ``$AEP2_ZKEY``
    the keys are imported from that snarkjs ceremony ``.zkey`` instead (production path).
    ``native_witness=True`` also builds (or finds) the C++ witness generator when the
    toolchain is present (``build_native_witness``): minutes on its first build, so callers
    that only need the keys leave it off.

    Raises ``ValueError`` for bad parameters and ``BuildError`` when circom or the setup fails.
    """
    artifacts = _build_keys(n, i, p, cache_dir, progress)
    if native_witness:
        build_native_witness(artifacts, progress=progress)
    return artifacts


def _build_keys(n: int, i: int, p: int, cache_dir: Path | str | None, progress: bool) -> CircuitArtifacts:
    for name, value in (("n", n), ("i", i), ("p", p)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if n >= 2**16:
        raise ValueError("n must be < 2^16 (keeps every slot total far below its 88 bits)")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = artifact_hash(n, i, p)
    final = root / digest
    if (final / _MANIFEST).is_file():
        return CircuitArtifacts.load(final)

    root.mkdir(parents=True, exist_ok=True)
    _build_once(final, lambda work: _build(work, n, i, p, digest, progress))
    return CircuitArtifacts.load(final)


def _build_once(final: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(work)`` in a temporary directory beside ``final`` and rename it to ``final``,
    under the ``fcntl`` lock ``<final>.lock``, unless ``final`` is complete (has a manifest)."""
    with open(final.with_name(f"{final.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / _MANIFEST).is_file():  # another process built it while we waited
            return
        # Under the lock, these can only be what a killed build left behind.
        for leftover in (final, *final.parent.glob(f".{final.name}-*")):
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            build(work)
            os.chmod(work, 0o755)  # mkdtemp makes it private
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[aep2 circuits] {message}", file=sys.stderr, flush=True)


def _build(work: Path, n: int, i: int, p: int, digest: str, progress: bool) -> None:
    main = work / "main.circom"
    main.write_text(
        "pragma circom 2.1.5;\n"
        f"// Generated by settlement/artifacts.py (artifact hash {digest}). Do not edit.\n"
        'include "circuits/batch.circom";\n\n'
        "component main {public [timeRef, intentHash, intentWord, payeeWord]} = "
        f"Batch({n}, {i}, {p}, {PAYEE_TREE_DEPTH});\n"
    )
    sources = work / "sources"
    sources.mkdir()
    for source in CIRCUITS_DIR.glob("*.circom"):
        shutil.copy2(source, sources / source.name)

    _log(progress, f"compiling circuit N={n} I={i} P={p}…")
    started = time.monotonic()
    # circom2 resolves includes only through -l from the project root (TOOLCHAIN: Circuits).
    result = subprocess.run(
        [str(CIRCOM), str(main), "-l", "node_modules", "-l", ".", "--O2", "--r1cs", "--wasm",
         "-o", str(work)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not (work / "main.r1cs").is_file():
        raise BuildError(f"circom failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    compile_seconds = time.monotonic() - started
    constraints = _r1cs_constraints(work / "main.r1cs")
    _log(progress, f"compiled in {compile_seconds:.1f} s: {constraints} constraints")

    zkey = _zkey_path()
    started = time.monotonic()
    try:
        if zkey is None:
            _log(progress, "trusted setup (development)… UNSAFE FOR PRODUCTION, single party")
            pk, vk = groth16py.setup(str(work / "main.r1cs"))
        else:
            _log(progress, f"importing ceremony zkey {zkey}…")
            pk, vk = groth16py.import_zkey(str(zkey))
    except Exception as exc:  # groth16py.SetupError / EncodingError
        raise BuildError(f"Groth16 setup failed: {exc}") from exc
    if vk.n_public != 1 + 2 * i + p:
        raise BuildError(f"verifying key has {vk.n_public} public inputs, expected {1 + 2 * i + p}")
    setup_seconds = time.monotonic() - started
    _log(progress, f"setup done in {setup_seconds:.1f} s")

    pk.save(str(work / "proving_key.bin"))
    (work / "verification_key.json").write_text(vk.to_json())
    solidity = vk.to_solidity(pragma=SOLIDITY_PRAGMA, contract_name=_GROTH16_CONTRACT, style="snarkjs")
    (work / f"{VERIFIER_CONTRACT}.sol").write_text(
        f"// GENERATED by settlement/artifacts.py from the Batch({n}, {i}, {p}, {PAYEE_TREE_DEPTH}) verifying key\n"
        f"// (artifact hash {digest}, groth16py {groth16py.__version__}, snarkjs-style ABI).\n"
        "// Do not edit. Proof words: a[0], a[1], b[0][0], b[0][1], b[1][0], b[1][1], c[0], c[1]\n"
        "// exactly as in groth16py's Ethereum proof blob (b's Fp2 words already in (c1, c0) order).\n"
        + solidity
        + _batch_shape_contract(n, i, p, development_setup=zkey is None)
    )
    if zkey is None:
        setup_text = (
            "UNSAFE FOR PRODUCTION\n\n"
            "These Groth16 keys come from groth16py's single-party development setup\n"
            f"(groth16py {groth16py.__version__}, setup(r1cs)). The process that ran it saw the\n"
            "toxic waste, so anyone holding it could forge proofs for this verifier.\n"
            "Use it for tests and local demos only. For real funds run a multi-party\n"
            "ceremony with snarkjs over main.r1cs and build with AEP2_ZKEY=<ceremony .zkey>.\n"
        )
    else:
        setup_text = (
            f"Groth16 keys imported from the ceremony zkey {zkey}\n"
            f"(sha256 {hashlib.sha256(zkey.read_bytes()).hexdigest()}).\n"
        )
    (work / "SETUP.txt").write_text(setup_text)

    manifest = {
        "format": _FORMAT,
        "template": "Batch",
        "n": n,
        "i": i,
        "p": p,
        "constraints": constraints,
        "hash": digest,
        "circomlib": _circomlib_version(),
        "groth16py": groth16py.__version__,
        "developmentSetup": zkey is None,
        "compileSeconds": round(compile_seconds, 2),
        "setupSeconds": round(setup_seconds, 2),
        "depth": PAYEE_TREE_DEPTH,
        "publicSignals": ["timeRef", f"intentHash[{i}]", f"intentWord[{i}]", f"payeeWord[{p}]"],
    }
    (work / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _batch_shape_contract(n: int, i: int, p: int, *, development_setup: bool) -> str:
    """The deployed verifier: groth16py's contract plus ``IBatchVerifier.batchShape()``, which
    the Settlement constructor reads so that it cannot be deployed over another circuit."""
    return (
        f"\n\n/// @notice Groth16 verifier of Batch({n}, {i}, {p}, {PAYEE_TREE_DEPTH}) with its shape.\n"
        f"contract {VERIFIER_CONTRACT} is {_GROTH16_CONTRACT} {{\n"
        "    /// @notice (N, I, P, D, keys from the unsafe development setup) of circuits/batch.circom.\n"
        "    function batchShape() external pure returns (uint256, uint256, uint256, uint256, bool) {\n"
        f"        return ({n}, {i}, {p}, {PAYEE_TREE_DEPTH}, {'true' if development_setup else 'false'});\n"
        "    }\n"
        "}\n"
    )


def _r1cs_constraints(path: Path) -> int:
    """Number of constraints from an ``.r1cs`` header section (iden3 r1cs format v1)."""
    with open(path, "rb") as f:
        magic, _version, n_sections = struct.unpack("<4sII", f.read(12))
        if magic != b"r1cs":
            raise BuildError(f"{path} is not an r1cs file")
        for _ in range(n_sections):
            section_type, size = struct.unpack("<IQ", f.read(12))
            if section_type != 1:
                f.seek(size, os.SEEK_CUR)
                continue
            (field_size,) = struct.unpack("<I", f.read(4))
            f.seek(field_size, os.SEEK_CUR)  # prime
            # nWires, nPubOut, nPubIn, nPrvIn (u32), nLabels (u64), nConstraints (u32)
            _w, _o, _pi, _pr, _labels, n_constraints = struct.unpack("<IIIIQI", f.read(28))
            return int(n_constraints)
    raise BuildError(f"{path} has no header section")


# --------------------------------------------------------------------------------------
# circom's C++ witness generator (TOOLCHAIN.md: circom C++ witness generator)

_TOOLCHAIN_PROBE = "#include <gmp.h>\n#include <nlohmann/json.hpp>\n"
_GMP_MACROS = ("__GNU_MP_VERSION", "__GNU_MP_VERSION_MINOR", "__GNU_MP_VERSION_PATCHLEVEL")
_JSON_MACROS = ("NLOHMANN_JSON_VERSION_MAJOR", "NLOHMANN_JSON_VERSION_MINOR", "NLOHMANN_JSON_VERSION_PATCH")


class _NoToolchain(Exception):
    """The C++ generator cannot be built here; the message says what is missing."""


def _toolchain(compiler: str) -> tuple[str, dict[str, str]]:
    """``(identity, versions)`` of the toolchain the C++ generator is built with.

    Raises ``_NoToolchain`` when a tool or header is missing or the machine is not x86-64.
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        raise _NoToolchain(f"circom's fr.asm is x86-64 assembly, this machine is {platform.machine()}")
    paths = []
    for tool in (compiler, "nasm", "make"):
        path = shutil.which(tool)
        if path is None:
            raise _NoToolchain(f"{tool} not found")
        paths.append(path)
    identity, versions = _probe(*paths)
    return identity, dict(versions)


@lru_cache(maxsize=8)
def _probe(compiler: str, nasm: str, make: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    # The headers' version macros both prove the headers are there and name their versions.
    result = subprocess.run([compiler, "-E", "-dM", "-x", "c++", "-"], input=_TOOLCHAIN_PROBE,
                            capture_output=True, text=True)
    if result.returncode != 0:
        missing = (result.stderr.strip().splitlines() or ["no output"])[0]
        raise _NoToolchain(f"GMP or nlohmann-json headers missing ({missing})")
    macros = dict(re.findall(r"^#define (\w+) (\S+)$", result.stdout, re.MULTILINE))
    versions = {
        "compiler": _first_line([compiler, "--version"]),
        "nasm": _first_line([nasm, "-v"]),
        "make": _first_line([make, "--version"]),
        "gmp": ".".join(macros.get(name, "?") for name in _GMP_MACROS),
        "nlohmann-json": ".".join(macros.get(name, "?") for name in _JSON_MACROS),
        "circom2": str(json.loads((NODE_MODULES / "circom2" / "package.json").read_text())["version"]),
        "format": str(_NATIVE_FORMAT),
    }
    identity = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:12]
    return identity, tuple(sorted(versions.items()))


def _first_line(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    return (result.stdout.strip().splitlines() or [""])[0]


def find_native_witness(artifacts: CircuitArtifacts, *, compiler: str = "g++") -> NativeWitness | None:
    """The validated C++ witness generator of ``artifacts`` for this machine's toolchain, or
    ``None`` (not built yet, toolchain missing, or ``$AEP2_NATIVE_WITNESS=0``). Builds nothing."""
    if not native_witness_enabled():
        return None
    try:
        identity, _versions = _toolchain(compiler)
    except _NoToolchain:
        return None
    directory = artifacts.directory / f"native-{identity}"
    return NativeWitness(directory, identity) if (directory / _MANIFEST).is_file() else None


def build_native_witness(
    artifacts: CircuitArtifacts, *, compiler: str = "g++", progress: bool = True
) -> NativeWitness | None:
    """Build (once per artifact build and toolchain) and validate circom's C++ witness generator.

    ``compiler`` is the C++ compiler's name or path (circom's Makefile ``CC``). The build runs
    under an ``fcntl`` lock in a temporary directory renamed into place, and is accepted only
    if its witness of an all-padding batch equals the WASM generator's byte for byte and it
    refuses an unsatisfied constraint. Returns ``None``, after one line on stderr saying why
    (when ``progress``), if ``$AEP2_NATIVE_WITNESS=0``, the toolchain is missing, or the build
    or its validation fails: the WASM generator then stays in use.
    """
    if not native_witness_enabled():
        _log(progress, f"native witness generator off ({NATIVE_WITNESS_ENV}=0): using the WASM one")
        return None
    try:
        identity, versions = _toolchain(compiler)
    except _NoToolchain as exc:
        _log(progress, f"no native witness generator ({exc}): using the WASM one")
        return None
    final = artifacts.directory / f"native-{identity}"
    if not (final / _MANIFEST).is_file():
        try:
            _build_once(final, lambda work: _build_native(work, artifacts, compiler, identity, versions, progress))
        except (BuildError, OSError) as exc:  # OSError: e.g. a cache another user owns
            _log(progress, f"native witness generator failed, using the WASM one: {str(exc).splitlines()[0]}")
            return None
    return NativeWitness(final, identity)


def _build_native(work: Path, artifacts: CircuitArtifacts, compiler: str, identity: str,
                  versions: dict[str, str], progress: bool) -> None:
    source = work / f"{_NATIVE_NAME}.circom"
    source.write_text((artifacts.directory / "main.circom").read_text())
    _log(progress, f"compiling the native witness generator of N={artifacts.n} I={artifacts.i} P={artifacts.p}…")
    started = time.monotonic()
    _run([str(CIRCOM), str(source), "-l", "node_modules", "-l", ".", "--O2", "--c", "-o", str(work)],
         PROJECT_ROOT, "circom --c")
    cpp = work / f"{_NATIVE_NAME}_cpp"
    compile_seconds = time.monotonic() - started
    started = time.monotonic()
    # circom's own Makefile flags (-O3, asserts kept: they refuse unsatisfied constraints).
    _run(["make", f"-j{min(2, os.cpu_count() or 1)}", f"CC={compiler}"], cpp, "make")
    make_seconds = time.monotonic() - started
    for name in (_NATIVE_NAME, f"{_NATIVE_NAME}.dat"):
        os.rename(cpp / name, work / name)
    shutil.rmtree(cpp)
    source.unlink()
    _log(progress, f"native witness generator built in {compile_seconds + make_seconds:.1f} s; validating…")
    validation = _validate_native(artifacts, NativeWitness(work, identity))
    manifest = {
        "format": _NATIVE_FORMAT,
        "hash": artifacts.hash,
        "toolchain": versions,
        "compileSeconds": round(compile_seconds, 2),
        "makeSeconds": round(make_seconds, 2),
        "validation": validation,
    }
    (work / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _run(command: list[str], cwd: Path, what: str) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{what} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")


def _validate_native(artifacts: CircuitArtifacts, native: NativeWitness) -> dict[str, object]:
    """Both generators' witness of an all-padding batch, byte for byte; and the native one
    must refuse an unused intent slot with a non-zero word (an unsatisfied constraint)."""
    inputs = _padding_inputs(artifacts.n, artifacts.i, artifacts.p)
    broken = dict(inputs, intentWord=[1] + [0] * (artifacts.i - 1))
    with tempfile.TemporaryDirectory(prefix="aep2-native-check-") as tmp:
        folder = Path(tmp)
        (folder / "padding.json").write_text(_decimal_json(inputs))
        (folder / "broken.json").write_text(_decimal_json(broken))
        seconds = {}
        for name, command in (
            ("wasm", artifacts.wasm_witness_command(folder / "padding.json", folder / "wasm.wtns")),
            ("native", native.command(folder / "padding.json", folder / "native.wtns")),
        ):
            started = time.monotonic()
            _run(command, folder, f"{name} witness of the padding batch")
            seconds[name] = round(time.monotonic() - started, 3)
        wasm, ours = (folder / "wasm.wtns").read_bytes(), (folder / "native.wtns").read_bytes()
        if wasm != ours:
            raise BuildError(f"native witness differs from the WASM one ({len(ours)} vs {len(wasm)} bytes)")
        refused = subprocess.run(native.command(folder / "broken.json", folder / "broken.wtns"),
                                 capture_output=True, text=True)
        if refused.returncode == 0 or (folder / "broken.wtns").exists():
            raise BuildError("native witness generator accepted an unsatisfied constraint (built with NDEBUG?)")
    return {
        "input": "all-padding batch, timeRef 0",
        "wtnsSha256": hashlib.sha256(wasm).hexdigest(),
        "identicalToWasm": True,
        "refusesUnsatisfied": True,
        "wasmSeconds": seconds["wasm"],
        "nativeSeconds": seconds["native"],
    }


def _padding_inputs(n: int, i: int, p: int) -> dict[str, object]:
    """The circuit inputs of a batch with no intent and no mandate (every slot padding, as
    settlement.witness lays them out): satisfiable for every shape."""
    d = PAYEE_TREE_DEPTH
    signature = padding_signature()
    return {
        "timeRef": 0,
        "intentHash": [0] * i, "intentWord": [0] * i, "payeeWord": [0] * p,
        **{name: [0] * i for name in ("Ax", "Ay", "intentField", "payeesRoot", "cap")},
        "payeeIndex": [[0] * p for _ in range(i)],
        "payeePath": [[[0] * d for _ in range(p)] for _ in range(i)],
        "enabled": [0] * n,
        "intentSel": [[0] * i for _ in range(n)],
        "payeeSel": [[0] * p for _ in range(n)],
        **{name: [0] * n for name in ("amount", "nonce", "deadline", "requestHash")},
        "R8x": [signature.R8x] * n, "R8y": [signature.R8y] * n, "S": [signature.S] * n,
    }


def _decimal_json(inputs: dict[str, object]) -> str:
    # Decimal strings: node's JSON.parse would round integers above 2^53.
    def text(value: object) -> object:
        return [text(v) for v in value] if isinstance(value, list) else str(value)

    return json.dumps({name: text(value) for name, value in inputs.items()})
