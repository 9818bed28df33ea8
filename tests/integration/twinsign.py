# SPDX-License-Identifier: MIT
"""The second implementation of signed desired documents (docs/protocol.md, "Signed desired
documents"), in Python with Debian's python3-cryptography, written from the protocol text and
not from twind's code: the integration tests sign documents with it (expired ones, ones for
another device, replays) and check twinctl's signatures with it, and

    /usr/bin/python3 tests/integration/twinsign.py --vectors > tests/twin-signature-vectors.json

writes the known-answer vectors that tests/test-twin-signature.c holds the C code to."""

import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PROPERTY = "twinSignature"
SEQ_MAX = 2**52 - 1


def _check_numbers(v, path="the document"):
    """A signed document holds no real numbers: they have no canonical form."""
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return
    if isinstance(v, float):
        raise ValueError(f"{path} is a real number")
    if isinstance(v, list):
        for i, x in enumerate(v):
            _check_numbers(x, f"{path}[{i}]")
        return
    if isinstance(v, dict):
        for k, x in v.items():
            _check_numbers(x, f"{path}.{k}")
        return
    raise TypeError(f"{path}: {type(v).__name__} is not JSON")


def canonical(value):
    """The canonical encoding: sorted keys, no white space, ASCII only with lower-case \\u
    escapes, integers only."""
    _check_numbers(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def signed_object(doc):
    """What the signature covers: the properties (no '$' keys) and the signature property
    without its sig member."""
    out = {k: v for k, v in doc.items() if not k.startswith("$") and k != PROPERTY}
    sig = dict(doc[PROPERTY])
    sig.pop("sig", None)
    out[PROPERTY] = sig
    return out


def message(doc):
    return canonical(signed_object(doc))


def fingerprint(public_key):
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def private_key_from_seed(seed):
    return Ed25519PrivateKey.from_private_bytes(seed)


def generate():
    return Ed25519PrivateKey.generate()


def private_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key):
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_private_pem(text):
    return serialization.load_pem_private_key(text.encode(), password=None)


def load_public_pem(text):
    return serialization.load_pem_public_key(text.encode())


def sign(doc, key, device_id, seq, key_id=None, not_after=None):
    """A copy of doc (its '$' keys kept, any old signature replaced) signed by key for
    device_id with sequence seq; key_id defaults to the key's fingerprint."""
    out = {k: v for k, v in doc.items() if k != PROPERTY}
    sig = {
        "alg": "ed25519",
        "keyId": key_id or fingerprint(key.public_key()),
        "seq": seq,
        "deviceId": device_id,
    }
    if not_after is not None:
        sig["notAfter"] = not_after
    out[PROPERTY] = sig
    raw = key.sign(message(out))
    sig["sig"] = base64.b64encode(raw).decode("ascii")
    return out


def verify(doc, public_key):
    """Raises cryptography's InvalidSignature when doc's signature does not verify."""
    raw = base64.b64decode(doc[PROPERTY]["sig"], validate=True)
    public_key.verify(raw, message(doc))


def merge_patch_diff(old, new):
    """The RFC 7396 merge patch that turns object old into object new (a cloud's desired
    properties are changed by patches: a member that went away must be sent as null)."""
    patch = {k: None for k in old if k not in new}
    for k, v in new.items():
        if k in old and old[k] == v:
            continue
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            patch[k] = merge_patch_diff(old[k], v)
        else:
            patch[k] = v
    return patch


# ---- known-answer vectors -------------------------------------------------------------------

SEED = bytes(range(32))

CANONICAL_CASES = [
    ("empty object", {}),
    ("scalars", {"t": True, "f": False, "n": None, "i": -42, "z": 0, "big": 4503599627370495}),
    ("key order is by code point", {"b": 1, "a": 2, "B": 3, "_": 4, "aa": 5, "\u00e9": 6, "z": 7}),
    ("nested", {"o": {"y": [1, {"b": 2, "a": 1}], "x": []}, "a": [[], {}]}),
    ("e acute", {"s": "caf\u00e9"}),
    ("slash", {"s": "a/b</c>"}),
    ("quote and backslash", {"s": 'say "hi" \\ bye'}),
    ("control characters", {"s": "\b\f\n\r\t\u0000\u0001\u001f"}),
    ("delete and C1", {"s": "\u007f\u0080\u009f"}),
    ("beyond the BMP", {"s": "\U0001f600 \U0010ffff"}),
    ("line separators", {"s": "\u2028\u2029\ufeff\uffff"}),
    ("escapes in keys", {"k\u00e9/\n": "v"}),
]

DOCUMENTS = [
    (
        "tutorial",
        {"$version": 4, "configId": 3, "sendFrequency": "5m"},
        {"device_id": "myDeviceId", "seq": 1732611718000},
    ),
    (
        "fingerprint key id, not-after, nested properties",
        {
            "$version": 12,
            "configId": 7,
            "telemetry": {"interval": 15, "targets": ["a", "b/c", "caf\u00e9"]},
            "enabled": True,
            "limit": None,
        },
        {"device_id": "sensor-0042", "seq": 1, "not_after": "2030-01-01T00:00:00Z"},
    ),
    (
        "named key, every kind of string",
        {"$version": 1, "configId": 1, "motd": "\u00e9\u00e8 \U0001f600 \u007f \t/\\\""},
        {"device_id": "a.b_c:d-e", "seq": SEQ_MAX, "key_id": "ops-2026"},
    ),
]


def vectors():
    key = private_key_from_seed(SEED)
    out = {
        "generator": "tests/integration/twinsign.py (Python json + python3-cryptography)",
        "seed": SEED.hex(),
        "privateKeyPem": private_pem(key),
        "publicKeyPem": public_pem(key),
        "fingerprint": fingerprint(key.public_key()),
        "canonical": [],
        "documents": [],
    }
    for name, value in CANONICAL_CASES:
        out["canonical"].append(
            {"name": name, "value": value, "text": canonical(value).decode("ascii")}
        )
    for name, doc, how in DOCUMENTS:
        signed = sign(
            doc,
            key,
            how["device_id"],
            how["seq"],
            key_id=how.get("key_id"),
            not_after=how.get("not_after"),
        )
        verify(signed, key.public_key())
        out["documents"].append(
            {"name": name, "document": signed, "message": message(signed).decode("ascii")}
        )
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["--vectors"]:
        sys.exit("usage: twinsign.py --vectors")
    json.dump(vectors(), sys.stdout, indent=2, ensure_ascii=True, sort_keys=True)
    sys.stdout.write("\n")
