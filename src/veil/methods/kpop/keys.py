"""KPOP key files: the secret that unlocks a hidden concept, kept apart from the public artifact.

A key holds, for each hidden concept, the pair of prompt tensors ``(P_k, P_v)`` of shape
``(m, width)`` (docs/methods/kpop.md). On disk it is a ``.veilkey`` file (specified in docs/key-format.md)::

    b"VEILKEY\\0"               8 bytes, the magic
    header length              8 bytes, little-endian unsigned
    header                     JSON: format_version, concepts, key_fingerprint, base model, encryption
    payload                    the key tensors as safetensors bytes, or those bytes sealed with
                               AES-256-GCM under a key derived from a passphrase by scrypt

When encrypted, the header is the cipher's associated data, so a changed header fails to decrypt
just as a changed payload does. The public artifact records only each concept's fingerprint
(SHA-256 over the key tensors' bytes); :func:`load_key_for` refuses a key whose fingerprint differs.
Nothing here prints, logs or formats key values: :class:`Key`'s ``repr`` names only the concepts.

Example:
    >>> save_key(method.key, "circle.veilkey", artifact=artifact, passphrase=secret)
    >>> key = load_key_for("circle.veilkey", artifact, passphrase=secret)
    >>> with artifact.attach(pipe).unlocked(pipe, key):
    ...     image = pipe("a circle").images[0]
"""

import base64
import hashlib
import json
import os
import struct

import torch

from ..._io import atomic_file
from ...errors import VeilError

MAGIC = b"VEILKEY\0"
FORMAT_VERSION = 1
PASSPHRASE_ENV = "VEIL_KEY_PASSPHRASE"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAX_HEADER_BYTES = 1 << 20
_MAX_SCRYPT_N = 2**20  # refuse headers asking for absurd work or memory


def tensor_pair_fingerprint(key_tokens, value_tokens):
    """SHA-256 over one concept's ``(P_k, P_v)``: shapes, then float32 little-endian bytes, in that order."""
    digest = hashlib.sha256(b"veil-key-v1")
    for tensor in (key_tokens, value_tokens):
        array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        digest.update(str(tuple(array.shape)).encode())
        digest.update(array.astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


class Key:
    """The secret of a KPOP artifact: ``{concept: (P_k, P_v)}``, each ``(m, width)`` float32 on the CPU.

    Args:
        pairs: mapping concept -> ``(P_k, P_v)``; the order of the mapping is the order of the concepts.
    """

    def __init__(self, pairs):
        self.pairs = {}
        for concept, (key_tokens, value_tokens) in dict(pairs).items():
            key_tokens = key_tokens.detach().to("cpu", torch.float32).clone()
            value_tokens = value_tokens.detach().to("cpu", torch.float32).clone()
            if key_tokens.ndim != 2 or key_tokens.shape != value_tokens.shape:
                raise VeilError(
                    f"The key for {concept!r} must be two tensors of the same shape (tokens, width), got "
                    f"{tuple(key_tokens.shape)} and {tuple(value_tokens.shape)}."
                )
            self.pairs[str(concept)] = (key_tokens, value_tokens)
        if not self.pairs:
            raise VeilError("A key needs at least one concept.")

    def __repr__(self):
        # Never the values: a repr ends up in logs and tracebacks.
        return f"Key(concepts={self.concepts!r})"

    @property
    def concepts(self):
        return list(self.pairs)

    def __getitem__(self, concept):
        return self.pairs[concept]

    def __contains__(self, concept):
        return concept in self.pairs

    def fingerprints(self):
        """``{concept: SHA-256 hex}``; what the public artifact records as ``key_fingerprint``."""
        return {c: tensor_pair_fingerprint(*pair) for c, pair in self.pairs.items()}

    def subset(self, concepts):
        """A key holding only ``concepts`` (for unlocking one of several hidden concepts)."""
        missing = [c for c in concepts if c not in self.pairs]
        if missing:
            raise VeilError(f"This key holds no concept {missing[0]!r}; it holds {', '.join(map(repr, self.concepts))}.")
        return Key({c: self.pairs[c] for c in concepts})

    def tensors(self):
        """Flat ``{name: tensor}`` for safetensors: ``P_k.<i>``, ``P_v.<i>`` in concept order."""
        flat = {}
        for index, (key_tokens, value_tokens) in enumerate(self.pairs.values()):
            flat[f"P_k.{index}"] = key_tokens.contiguous()
            flat[f"P_v.{index}"] = value_tokens.contiguous()
        return flat

    @classmethod
    def from_tensors(cls, concepts, tensors):
        return cls({c: (tensors[f"P_k.{i}"], tensors[f"P_v.{i}"]) for i, c in enumerate(concepts)})


def random_key_like(key, generator=None):
    """A random key with the concepts and per-tensor norms of ``key`` (the bench's random-key row).

    Args:
        key: a :class:`Key`.
        generator: a ``torch.Generator`` for reproducible draws.
    """
    pairs = {}
    for concept, tensors in key.pairs.items():
        drawn = []
        for tensor in tensors:
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            drawn.append(noise * (tensor.norm() / noise.norm().clamp_min(1e-12)))
        pairs[concept] = tuple(drawn)
    return Key(pairs)


# bytes on disk ------------------------------------------------------------------------------------------
def _derive(passphrase, salt, n, r, p):
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def key_file_bytes(key, *, artifact=None, passphrase=None, scrypt_n=SCRYPT_N):
    """The ``.veilkey`` bytes of ``key``; encrypted when ``passphrase`` is given.

    Args:
        key: a :class:`Key`.
        artifact: the public :class:`~veil.artifact.Artifact` the key belongs to (its base model and
            concepts go in the header; optional).
        passphrase: a non-empty string, or ``None`` for an unencrypted file.
        scrypt_n: scrypt's cost parameter (a power of two).
    """
    from safetensors.torch import save as safetensors_bytes

    payload = safetensors_bytes(key.tensors(), metadata={"concepts": json.dumps(key.concepts)})
    header = {
        "format": "veil-key",
        "format_version": FORMAT_VERSION,
        "method": "kpop",
        "concepts": key.concepts,
        "key_fingerprint": key.fingerprints(),
    }
    if artifact is not None:
        header["base_model_fingerprint"] = artifact.manifest["base_model"]["fingerprint"]
    return _pack(header, payload, passphrase, scrypt_n)


def _pack(header, payload, passphrase, scrypt_n):
    """MAGIC, the header's length, the header, and ``payload`` (sealed under ``passphrase`` when given)."""
    header = dict(header, encrypted=passphrase is not None)
    if passphrase is not None:
        if not isinstance(passphrase, str) or not passphrase:
            raise VeilError("The passphrase is empty; write a non-empty passphrase in the passphrase file.")
        salt, nonce = os.urandom(16), os.urandom(12)
        header["kdf"] = {"name": "scrypt", "n": int(scrypt_n), "r": SCRYPT_R, "p": SCRYPT_P, "salt": base64.b64encode(salt).decode()}
        header["cipher"] = {"name": "AES-256-GCM", "nonce": base64.b64encode(nonce).decode()}
    header["payload_bytes"] = len(payload) + (16 if passphrase is not None else 0)  # GCM appends a 16-byte tag
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    if passphrase is not None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        secret = _derive(passphrase, salt, int(scrypt_n), SCRYPT_R, SCRYPT_P)
        payload = AESGCM(secret).encrypt(nonce, payload, header_bytes)
    return MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes + payload


def sealed_tensors_bytes(tensors, passphrase, scrypt_n=SCRYPT_N):
    """``{name: tensor}`` sealed as a key file is (scrypt, then AES-256-GCM), for the key's part of a training
    checkpoint: bytes to keep as a ``uint8`` tensor beside the public tensors. See :func:`open_sealed_tensors`."""
    from safetensors.torch import save as safetensors_bytes

    payload = safetensors_bytes({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    return _pack({"format": "veil-sealed-tensors", "format_version": FORMAT_VERSION}, payload, passphrase, scrypt_n)


def open_sealed_tensors(data, where, passphrase=None):
    """The tensors of :func:`sealed_tensors_bytes`; ``where`` names them in errors as a phrase ("The key in the
    checkpoint ..."). ``passphrase`` ``None`` falls back to ``VEIL_KEY_PASSPHRASE``."""
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    where = _Phrase(where)
    header, header_bytes, payload = _split(bytes(data), where, "veil-sealed-tensors")
    if header.get("encrypted"):
        payload = _decrypt(where, header, header_bytes, payload, passphrase)
    try:
        return safetensors_load(payload)
    except (SafetensorError, ValueError, RuntimeError):
        raise _damaged(where) from None


def save_key(key, path, *, artifact=None, passphrase=None, overwrite=False, scrypt_n=SCRYPT_N):
    """Write ``key`` to ``path`` atomically (see :func:`key_file_bytes`); refuses an existing file unless ``overwrite``."""
    data = key_file_bytes(key, artifact=artifact, passphrase=passphrase, scrypt_n=scrypt_n)
    with atomic_file(path, overwrite=overwrite) as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # a secret: readable by its owner only
    return path


def _label(where):
    """How errors name what they read: a key file's path, or a phrase given as such (a checkpoint's key)."""
    return where if isinstance(where, _Phrase) else f"The key file {where!r}"


class _Phrase(str):
    """A description for errors, used as it is (see :func:`_label`)."""


def _damaged(where):
    return VeilError(f"{_label(where)} is truncated or damaged; use an intact copy of the key.")


def read_key_header(path):
    """The header of a key file and the payload bytes, checked for shape but not yet decrypted."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise VeilError(f"The key file {path!r} does not exist; pass the file written by veil hide --key-out.") from None
    except OSError as error:
        raise VeilError(f"Could not read the key file {path!r} ({error.strerror}).") from None
    if not data.startswith(MAGIC) and not (len(data) < len(MAGIC) and MAGIC.startswith(data)):
        raise VeilError(f"{path!r} is not a veil key file; pass the .veilkey file written by veil hide --key-out.")
    return _split(data, path, "veil-key")


def _split(data, where, kind):
    """``(header, header bytes, payload)`` of sealed or plain bytes of ``kind``, checked for shape."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise _damaged(where)
    (length,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    start = len(MAGIC) + 8
    if length > _MAX_HEADER_BYTES or len(data) < start + length:
        raise _damaged(where)
    header_bytes, payload = data[start : start + length], data[start + length :]
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _damaged(where) from None
    if not isinstance(header, dict) or header.get("format") != kind:
        raise _damaged(where)
    if header.get("format_version") != FORMAT_VERSION:
        raise VeilError(
            f"{_label(where)} has format version {header.get('format_version')!r}, which this veil does not "
            f"know (it reads version {FORMAT_VERSION}); upgrade veil."
        )
    if header.get("payload_bytes") != len(payload):
        raise _damaged(where)
    return header, header_bytes, payload


def read_key(path, passphrase=None):
    """Read, decrypt and verify a key file on its own (no artifact). See :func:`load_key_for`.

    Args:
        passphrase: for an encrypted file; ``None`` falls back to the ``VEIL_KEY_PASSPHRASE``
            environment variable.

    Returns:
        :class:`Key`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    header, header_bytes, payload = read_key_header(path)
    if header.get("encrypted"):
        payload = _decrypt(path, header, header_bytes, payload, passphrase)
    try:
        tensors = safetensors_load(payload)
        key = Key.from_tensors(header["concepts"], tensors)
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError, VeilError):
        raise _tampered_or_damaged(path, header) from None
    if key.fingerprints() != header.get("key_fingerprint"):
        raise _tampered_or_damaged(path, header)
    return key


def _tampered_or_damaged(path, header):
    if header.get("encrypted"):  # authenticated, so only a bug or a forged file gets here
        return VeilError(f"The key file {path!r} has been tampered with; use an intact copy of the key.")
    return VeilError(
        f"The key file {path!r} has been tampered with or damaged (its tensors do not match its fingerprint); use an intact copy of the key."
    )


def _decrypt(path, header, header_bytes, payload, passphrase):
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if passphrase is None:
        passphrase = os.environ.get(PASSPHRASE_ENV) or None
    if passphrase is None:
        raise VeilError(
            f"{_label(path)} is encrypted; give its passphrase with --passphrase-file or the {PASSPHRASE_ENV} environment variable."
        )
    try:
        kdf, cipher = header["kdf"], header["cipher"]
        salt, nonce = base64.b64decode(kdf["salt"]), base64.b64decode(cipher["nonce"])
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        if kdf["name"] != "scrypt" or cipher["name"] != "AES-256-GCM" or not 2 <= n <= _MAX_SCRYPT_N or len(nonce) != 12:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise _damaged(path) from None
    secret = _derive(passphrase, salt, n, r, p)
    try:
        return AESGCM(secret).decrypt(nonce, payload, header_bytes)
    except InvalidTag:
        raise VeilError(f"{_label(path)} could not be decrypted: wrong passphrase or tampered file.") from None


def read_passphrase_file(path):
    """The passphrase in ``path`` (one trailing newline removed); refuses a missing or empty file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise VeilError(f"Could not read the passphrase file {path!r} ({error.strerror}).") from None
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    if not text:
        raise VeilError(f"The passphrase file {path!r} is empty; write the passphrase in it.")
    return text


def resolve_passphrase(passphrase_file=None):
    """The passphrase from ``passphrase_file`` if given, else from ``VEIL_KEY_PASSPHRASE``, else ``None``."""
    if passphrase_file:
        return read_passphrase_file(passphrase_file)
    return os.environ.get(PASSPHRASE_ENV) or None


def load_key_for(path, artifact, passphrase=None):
    """Read the key in ``path`` and check that it unlocks ``artifact``.

    Args:
        path: a ``.veilkey`` file.
        artifact: an :class:`~veil.artifact.Artifact` (or its folder) written by ``veil hide``.
        passphrase: for an encrypted key; ``None`` falls back to ``VEIL_KEY_PASSPHRASE``.

    Returns:
        :class:`Key`, holding the artifact's concepts that the file holds (all of them, or those of a key split per
        concept with :meth:`Key.subset`), in the artifact's order.

    Raises:
        VeilError: the artifact has no key, the file is not a key, is damaged, truncated or tampered
            with, the passphrase is missing or wrong, or the key belongs to another artifact.
    """
    if isinstance(artifact, (str, os.PathLike)):
        from ...artifact import load_artifact

        artifact = load_artifact(artifact)
    expected = artifact.manifest.get("key_fingerprint")
    if not expected:
        raise VeilError(
            f"This {artifact.method_name} artifact has no key to unlock; --key only applies to artifacts written by veil hide."
        )
    header, _, _ = read_key_header(path)
    another = VeilError(
        f"The key {os.fspath(path)!r} belongs to another artifact (its fingerprint differs from the one this artifact "
        "records); pass the key written together with this artifact."
    )
    # Checked before decrypting so that a mismatched key is named without its passphrase; the
    # fingerprints are checked again on the decrypted tensors below.
    # A key file holds every concept of the artifact, or some of them (a key split per concept): each one it holds
    # must be one of the artifact's, with the fingerprint the artifact records.
    recorded = header.get("key_fingerprint") or {}
    if not isinstance(recorded, dict) or not recorded or any(expected.get(c) != fp for c, fp in recorded.items()):
        raise another
    key = read_key(path, passphrase)
    actual = key.fingerprints()
    if any(expected.get(c) != fp for c, fp in actual.items()):
        raise another
    return key.subset([c for c in expected if c in actual])
