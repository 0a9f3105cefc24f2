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

``<cache>`` is ``$AEP2_CACHE_DIR`` or ``~/.cache/aep2-gateway/circuits``; ``<hash>`` covers the
circuit sources, the circomlib version, ``n, i, p`` and the groth16py version (and the
ceremony ``.zkey`` when one is used), so a changed circuit never reuses stale keys. Builds
happen in a temporary directory renamed into place under an ``fcntl`` lock, so concurrent
processes (pytest workers, a gateway and a processor) build at most once.

Without ``AEP2_ZKEY`` the keys come from groth16py's single-party development setup, which is
UNSAFE FOR PRODUCTION: whoever ran it knows the toxic waste and can forge proofs. With
``AEP2_ZKEY=<path to a snarkjs ceremony .zkey>`` the keys are imported from the ceremony
instead; the ``.zkey`` must have been made from the very ``main.r1cs`` this module compiles.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import groth16py

from aep2.payees import PAYEE_TREE_DEPTH

__all__ = [
    "CircuitArtifacts",
    "BuildError",
    "build_artifacts",
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
    n: int, i: int, p: int, *, cache_dir: Path | str | None = None, progress: bool = True
) -> CircuitArtifacts:
    """Compile ``Batch(n, i, p)`` and set up its keys, or reuse the cached build.

    Without ``$AEP2_ZKEY`` this runs groth16py's single-party development setup:
    UNSAFE FOR PRODUCTION (the process that ran it could forge proofs). With ``$AEP2_ZKEY``
    the keys are imported from that snarkjs ceremony ``.zkey`` instead (production path).

    Raises ``ValueError`` for bad parameters and ``BuildError`` when circom or the setup fails.
    """
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
    with open(root / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / _MANIFEST).is_file():  # another process built it while we waited
            return CircuitArtifacts.load(final)
        if final.exists():  # an incomplete leftover (cannot happen with rename, but be safe)
            shutil.rmtree(final)
        work = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
        try:
            _build(work, n, i, p, digest, progress)
            os.chmod(work, 0o755)  # mkdtemp makes it private
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return CircuitArtifacts.load(final)


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
