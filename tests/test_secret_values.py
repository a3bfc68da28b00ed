"""Secrets whatever their type, and in whatever a log line carries."""

from __future__ import annotations

from cat_framework.errors import MAX_MESSAGE, cut_message
from cat_framework.rundir import is_secret, redact


def test_a_numeric_secret_is_masked_and_a_flag_is_not():
    assert is_secret("password", 12345678)
    assert redact({"password": 12345678})["password"] != 12345678
    assert not is_secret("api_key", True)
    assert not is_secret("max_new_tokens", 512)


def test_a_log_value_that_is_not_text_is_scrubbed_as_text():
    from cat_framework.logs import _scrubbed
    from cat_framework.scrub import register_secret

    register_secret("sk-test-0123456789abcdefghij")
    out = _scrubbed({"error": RuntimeError("401: Incorrect API key sk-test-0123456789abcdefghij")})
    assert "0123456789abcdefghij" not in out["error"]
    assert _scrubbed({"n": 3, "ok": True, "x": None}) == {"n": 3, "ok": True, "x": None}


def test_a_recorded_failure_is_bounded():
    from cat_framework.runner import failure_message

    message = failure_message(ValueError("x" * (5 * MAX_MESSAGE)))
    assert len(message) < MAX_MESSAGE + 200
    assert cut_message("short") == "short"


def test_stored_log_probs_may_carry_float_rounding_above_zero():
    from cat_framework.engine.async_rollouts import check_values

    assert check_values({"token_ids": [1, 2], "logprobs": [-0.5, 2e-7]}, vocab=10) is None
    assert "log-prob" in check_values({"token_ids": [1], "logprobs": [0.01]}, vocab=10)
    assert "vocabulary" in check_values({"token_ids": [10], "logprobs": [-1.0]}, vocab=10)
