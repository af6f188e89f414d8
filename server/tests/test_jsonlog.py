"""JSON log lines carry every structured field a call gives, and the ids in context."""

from __future__ import annotations

import json
import logging

from service_common.jsonlog import JsonFormatter, bound, log_fields, run_id_var


def _line(record: logging.LogRecord) -> dict[str, object]:
    value = json.loads(JsonFormatter("worker").format(record))
    assert isinstance(value, dict)
    return value


def _record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("model_trainer.training")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, "built", (), None, extra=extra)


def test_every_field_of_log_fields_reaches_the_line() -> None:
    record = _record(**log_fields("model_built", threads=2, split="test", step=5, ok=True))
    line = _line(record)
    assert line["event"] == "model_built" and line["category"] == "training"
    assert line["threads"] == 2 and line["split"] == "test"
    assert line["step"] == 5 and line["ok"] is True


def test_ids_come_from_context_unless_a_call_names_them() -> None:
    with bound(run_id_var, "run-context"):
        assert _line(_record(**log_fields("x")))["run_id"] == "run-context"
        assert _line(_record(**log_fields("x", run_id="run-given")))["run_id"] == "run-given"
