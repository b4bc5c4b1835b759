"""schemathesis hooks for scripts/fuzz (loaded through SCHEMATHESIS_HOOKS).

Rules across fields, which a schema states only in words, are kept out of the cases meant to
be valid: a mandate's `terms` (Moment's rules: `recurrence` for `scheduled`, `min` <= `max`,
`max_amount` >= `amount.max`, the first payment within the terms...; tested in
`domain::terms` and `tests/api/terms.rs`) are left out, and a mandate without terms asks for a
first payment above 0 (an `amount` of 0, a card verification, needs terms).

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
    if case.operation.method.upper() == "POST" and case.operation.path == "/mandates" and isinstance(case.body, dict):
        case.body.pop("terms", None)
        if case.body.get("amount") == 0:
            case.body["amount"] = 1
    if case.operation.method.upper() == "POST" and case.operation.path == "/charges" and isinstance(case.body, dict):
        # A charge above the mandate's ceiling is refused by its terms; the fuzz's mandate
        # allows up to 5000.
        if isinstance(case.body.get("amount"), (int, float)) and case.body["amount"] > 5000:
            case.body["amount"] = 5000
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key":
            key = headers[name]
            if isinstance(key, str) and WELL_FORMED.fullmatch(key):
                headers[name] = f"{key[:200]}~{uuid.uuid4().hex}"
