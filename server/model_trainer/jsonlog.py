"""The trainer's logging names, from `service_common.jsonlog`.

The implementation is shared with the Data Bank server so both log the same JSON shape; the
trainer's modules keep importing it from here.
"""

from __future__ import annotations

from service_common.jsonlog import (
    JsonFormatter,
    JsonScalar,
    bound,
    log_fields,
    request_id_var,
    run_id_var,
    setup_logging,
    tokenizer_id_var,
)

__all__ = [
    "JsonFormatter",
    "JsonScalar",
    "bound",
    "log_fields",
    "request_id_var",
    "run_id_var",
    "setup_logging",
    "tokenizer_id_var",
]
