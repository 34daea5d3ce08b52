#!/usr/bin/env python3
"""Verify an msp-compliance evidence export without the agent's code.

An independent implementation of the procedure in the README ("Verifying evidence without our
code"), written against the DSSE and in-toto specifications, using only the Python standard
library and the `cryptography` package for Ed25519.

Usage:
    verify_dsse.py --pubkey KEY.pub [--pubkey OTHER.pub ...] EXPORT.jsonl

KEY.pub holds the standard base64 of a raw 32-byte Ed25519 public key (what `keygen` writes).
EXPORT.jsonl is the output of `msp-compliance-agent evidence export`: one DSSE envelope per line.

For every line, in order:
 1. digest = "sha256:" + hex(SHA-256(line bytes without the newline));
 2. the envelope is {"payloadType", "payload", "signatures": [{"keyid", "sig"}]};
 3. payload bytes = base64-decode(payload);
 4. PAE = "DSSEv1" SP len(type) SP type SP len(payload) SP payload (lengths in ASCII decimal);
 5. a signature whose keyid (hex SHA-256 of a trusted raw public key) is trusted must verify
    over PAE with that key; at least one must, and none by a trusted key may fail;
 6. the payload is an in-toto Statement v1 with predicateType urn:msp-compliance:evidence:v1;
 7. predicate.seq is the previous line's seq + 1, and predicate.prev is the previous line's
    digest (seq 0 has no prev; an export may start later in the chain).

Exit status: 0 when every line verifies (a summary on stdout), 1 at the first bad line (named
on stdout), 2 for usage errors.
"""

import argparse
import base64
import binascii
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:msp-compliance:evidence:v1"


class Bad(Exception):
    """The first bad line: its number and what is wrong."""


def pae(payload_type: bytes, payload: bytes) -> bytes:
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)


def load_keys(paths):
    keys = {}
    for path in paths:
        with open(path, "rb") as handle:
            raw = base64.b64decode(handle.read().strip(), validate=True)
        if len(raw) != 32:
            raise SystemExit(f"{path}: expected 32 bytes, found {len(raw)}")
        keys[hashlib.sha256(raw).hexdigest()] = Ed25519PublicKey.from_public_bytes(raw)
    return keys


def check_signatures(envelope, keys, line_no):
    payload_type = envelope["payloadType"]
    if payload_type != PAYLOAD_TYPE:
        raise Bad(f"line {line_no}: payloadType {payload_type!r} is not {PAYLOAD_TYPE!r}")
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
    except (binascii.Error, ValueError) as err:
        raise Bad(f"line {line_no}: payload is not base64: {err}") from None
    message = pae(payload_type.encode("utf-8"), payload)
    signatures = envelope["signatures"]
    if not signatures:
        raise Bad(f"line {line_no}: no signature")
    verified_by = None
    for signature in signatures:
        key = keys.get(signature["keyid"])
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(signature["sig"], validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError):
            raise Bad(
                f"line {line_no}: signature by key {signature['keyid']} does not verify"
            ) from None
        verified_by = verified_by or signature["keyid"]
    if verified_by is None:
        signers = ", ".join(it["keyid"] for it in signatures)
        raise Bad(f"line {line_no}: no signature by a trusted key (signed by: {signers})")
    return payload, verified_by


def verify(lines, keys):
    previous = None  # (seq, digest) of the previous line
    first_seq = None
    keyids = set()
    n_records = 0
    for line_no, line in enumerate(lines, start=1):
        if line.endswith(b"\n"):
            line = line[:-1]
        if not line:
            continue
        digest = "sha256:" + hashlib.sha256(line).hexdigest()
        try:
            envelope = json.loads(line)
        except ValueError as err:
            raise Bad(f"line {line_no}: not JSON: {err}") from None
        if not isinstance(envelope, dict) or set(envelope) != {"payloadType", "payload", "signatures"}:
            raise Bad(f"line {line_no}: not a DSSE envelope")
        payload, keyid = check_signatures(envelope, keys, line_no)
        keyids.add(keyid)
        statement = json.loads(payload)
        if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
            raise Bad(f"line {line_no}: not an msp-compliance evidence statement")
        predicate = statement["predicate"]
        seq = predicate["seq"]
        prev = predicate.get("prev")
        if previous is None:
            if seq == 0 and prev is not None:
                raise Bad(f"line {line_no}: seq 0 must not have a prev")
            first_seq = seq
        else:
            previous_seq, previous_digest = previous
            if seq != previous_seq + 1:
                raise Bad(f"line {line_no}: seq {seq} does not follow seq {previous_seq}")
            if prev != previous_digest:
                raise Bad(
                    f"line {line_no}: prev {prev} is not the digest of the previous line {previous_digest}"
                )
        previous = (seq, digest)
        n_records += 1
    return n_records, first_seq, previous, keyids


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pubkey", action="append", required=True, help="trusted KEY.pub")
    parser.add_argument("export", help="JSON Lines export")
    args = parser.parse_args()
    keys = load_keys(args.pubkey)
    with open(args.export, "rb") as handle:
        try:
            n_records, first_seq, head, keyids = verify(handle, keys)
        except Bad as bad:
            print(f"FAILED: {bad}")
            return 1
        except (KeyError, TypeError, ValueError) as err:
            print(f"FAILED: malformed record: {err!r}")
            return 1
    if head is None:
        print("ok: 0 records")
    else:
        print(
            f"ok: {n_records} records, seq {first_seq} to {head[0]}, head {head[1]}, "
            f"keyids {', '.join(sorted(keyids))}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
