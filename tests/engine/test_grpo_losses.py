"""The loss-variant registry is the single source of ``loss_type`` names: ``grpo_loss`` dispatches
through it and the pipeline schema (types, JSON schema, errors) accepts exactly its names."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from pydantic import ValidationError

from cat_framework.engine import grpo_losses
from cat_framework.engine.grpo import grpo_loss
from cat_framework.engine.grpo_losses import (
    LOSSES,
    LossType,
    Normalisers,
    get_loss,
    loss_names,
    register_loss,
)
from cat_framework.pipeline import PipelineValidationError, load_pipeline
from cat_framework.pipeline.schema import Trainer
from tests.conftest import REPO

BUILT_IN = ("grpo", "dr_grpo", "dapo")


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so a test's registrations do not outlive it."""
    monkeypatch.setattr(grpo_losses, "LOSSES", dict(LOSSES))
    return grpo_losses.LOSSES


def test_built_in_variants_are_registered_in_order():
    assert loss_names() == BUILT_IN
    assert get_args(LossType) == BUILT_IN


def test_schema_accepts_exactly_the_registered_names():
    field = Trainer.model_fields["loss_type"]
    assert get_args(field.annotation) == loss_names()
    assert field.default in loss_names()
    schema = Trainer.model_json_schema()["properties"]["loss_type"]
    assert schema["enum"] == list(loss_names())  # what editors and the reference page show
    for name in loss_names():
        assert Trainer(loss_type=name).loss_type == name


def test_schema_error_lists_the_registered_names():
    with pytest.raises(ValidationError) as err:
        Trainer(loss_type="bnpo")
    message = err.value.errors()[0]["msg"]
    assert all(repr(name) in message for name in loss_names())


def test_validate_names_every_registered_loss(make_plugins):
    """What ``cat-framework validate`` prints for a typo: the key and every allowed name."""
    pipeline = REPO / "pipelines" / "math500_cat_rl.yaml"
    plugins = make_plugins()
    with pytest.raises(PipelineValidationError) as err:
        load_pipeline(pipeline, ["trainer.loss_type=bnpo"], plugins=plugins)
    (issue,) = err.value.issues
    assert issue.path == "trainer.loss_type"
    assert all(repr(name) in issue.message for name in loss_names()) and "'bnpo'" in issue.message
    for name in loss_names():
        config = load_pipeline(pipeline, [f"trainer.loss_type={name}"], plugins=plugins).config
        assert config.trainer.loss_type == name


def test_unknown_name_fails_with_the_list():
    with pytest.raises(ValueError, match=r"one of \('grpo', 'dr_grpo', 'dapo'\), got 'bnpo'"):
        get_loss("bnpo")
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="got 'bnpo'"):
        grpo_loss(logp, logp, torch.ones(1), torch.ones(1, 2), loss_type="bnpo")


def test_required_normaliser_is_checked_by_name():
    variant = get_loss("dr_grpo")
    with pytest.raises(ValueError, match="loss_type='dr_grpo' needs a positive max_completion"):
        variant.check(Normalisers(num_sequences=2))
    with pytest.raises(ValueError, match="positive max_completion_length"):
        variant.check(Normalisers(num_sequences=2, max_completion_length=0))
    variant.check(Normalisers(num_sequences=2, max_completion_length=4))


def test_a_name_is_registered_once(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_loss("dapo")(lambda per_token, mask, norm: per_token.sum())
    assert scratch_registry["dapo"].aggregate is LOSSES["dapo"].aggregate
    with pytest.raises(ValueError, match="not Normalisers fields"):
        register_loss("x", requires=("max_len",))


def test_a_registered_variant_is_used_by_grpo_loss(scratch_registry):
    @register_loss("token_sum", requires=("num_tokens",))
    def token_sum(per_token, mask, norm):
        return (per_token * mask).sum() / norm.num_tokens

    assert "token_sum" in loss_names() and "token_sum" not in LOSSES
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    # on policy l = -A: (-1 - 1 + 2) / 4
    out = grpo_loss(logp, logp, adv, mask, loss_type="token_sum", num_tokens=4.0)
    assert out.loss.item() == 0.0
    first_row = mask * torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    out = grpo_loss(logp, logp, adv, first_row, loss_type="token_sum", num_tokens=4.0)
    assert out.loss.item() == -0.5  # (-1 - 1) / 4
    with pytest.raises(ValueError, match="needs a positive num_tokens"):
        grpo_loss(logp, logp, adv, mask, loss_type="token_sum")
    # the schema lists the names registered at import, not a plugin's added later
    with pytest.raises(ValidationError):
        Trainer(loss_type="token_sum")


def test_registry_module_imports_no_torch():
    """Validating a pipeline imports the registry (through the schema): keep it torch-free."""
    import subprocess
    import sys

    code = (
        "import sys, cat_framework.engine.grpo_losses, cat_framework.pipeline.schema; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
