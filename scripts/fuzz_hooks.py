"""schemathesis hooks for scripts/fuzz (loaded through SCHEMATHESIS_HOOKS).

A rule no schema can state: an Idempotency-Key names one request, and the same key with
another body is refused (422, `idempotency-key-reused`). Generated keys repeat ("0", "A"),
so the key of every case meant to be valid is made unique here, as a real client makes its
keys. Cases meant to be invalid keep what was drawn: their refusal is the point, and an edit
would make schemathesis judge them again as valid ones.
"""

import re
import uuid

import schemathesis

WELL_FORMED = re.compile(r"[!-~]{1,255}")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    meta = case.meta
    if meta is not None and not meta.generation.mode.is_positive:
        return
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key":
            key = headers[name]
            if isinstance(key, str) and WELL_FORMED.fullmatch(key):
                headers[name] = f"{key[:200]}~{uuid.uuid4().hex}"
