"""ORPO's odds ratio near log p = 0: finite values and finite gradients for the per-token averages that bf16
training produces, checked against float64 hand values (trl issue #3237 is about this cancellation)."""

from __future__ import annotations

import math
import os
import types

import pytest
import torch

from forge_trl.trainers.orpo import MAX_AVG_LOGP, ForgeORPOTrainer, log1mexp, odds_ratio_terms

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def bf16(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.bfloat16).float())


def log1mexp_64(x: float) -> float:
    """log(1 - e^x) in float64, by the form that is exact for each range."""
    return math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x))


def log_odds_64(x: float) -> float:
    return x - log1mexp_64(x)


# Per-token average log-probs: nearly certain responses (what bf16 logits saturate to), around the branch point
# -ln 2, ordinary ones, and long unlikely responses whose exp underflows in float32.
AVERAGES = [
    -1e-6,
    -3e-6,
    -1e-4,
    bf16(-1e-4),
    bf16(-3e-3),
    -0.05,
    -0.6931,
    -0.6932,
    -1.0,
    bf16(-2.7),
    -30.0,
    -120.0,
    -2000.0,
]


@pytest.mark.parametrize("x", AVERAGES)
def test_log1mexp_matches_float64(x):
    got = float(log1mexp(torch.tensor([x], dtype=torch.float32)))
    expected = log1mexp_64(float(torch.tensor(x, dtype=torch.float32)))
    assert got == pytest.approx(expected, rel=2e-6, abs=1e-30)


def test_log1mexp_gradient_is_finite_where_exp_rounds_to_one():
    # exp(x) == 1 in float32 for |x| < 6e-8: the log1p(-exp(x)) form would be log(0), with an infinite slope.
    x = torch.tensor([-1e-7, -1e-8, -1e-12, -1e-30, -0.5, -50.0], requires_grad=True)
    log1mexp(x).sum().backward()
    assert torch.isfinite(x.grad).all(), x.grad
    # d/dx log(1 - e^x) = -e^x / (1 - e^x)
    expected = [-math.exp(v) / -math.expm1(v) for v in x.detach().double().tolist()]
    assert x.grad.double().tolist() == pytest.approx(expected, rel=1e-5)


PAIRS = [  # (chosen, rejected) per-token average log-probs
    (-0.9, -1.7),
    (bf16(-1e-4), bf16(-0.25)),
    (-2e-6, -1e-4),
    (bf16(-3e-3), bf16(-3e-3)),
    (-0.01, -40.0),
    (-800.0, -0.5),
]


@pytest.mark.parametrize("chosen, rejected", PAIRS)
def test_odds_ratio_matches_hand_values(chosen, rejected):
    ratio, log_odds = odds_ratio_terms(torch.tensor([chosen]), torch.tensor([rejected]))
    c, r = (float(torch.tensor(v, dtype=torch.float32)) for v in (chosen, rejected))
    expected_log_odds = log_odds_64(c) - log_odds_64(r)
    z = expected_log_odds
    expected_ratio = -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))  # log sigmoid(z)
    assert float(log_odds) == pytest.approx(expected_log_odds, rel=1e-5, abs=1e-5)
    assert float(ratio) == pytest.approx(expected_ratio, rel=1e-5, abs=1e-6)


# Inputs TRL 1.16 gets wrong: exact zeros (a response whose every token has probability 1 in bf16/fp32
# log_softmax), and averages within 6e-8 of zero.
CERTAIN = [(0.0, -0.3), (0.0, 0.0), (-1e-8, -1e-4), (-1e-8, -1e-8), (bf16(-5e-8), -2.0), (-0.3, 0.0)]


def stub_trainer(beta: float = 0.1):
    return types.SimpleNamespace(beta=beta, accelerator=types.SimpleNamespace(device="cpu"))


def forge_orpo_trainer():
    return ForgeORPOTrainer


@pytest.mark.parametrize("chosen, rejected", CERTAIN)
def test_forge_orpo_loss_and_gradients_stay_finite_near_certainty(chosen, rejected):
    c = torch.tensor([chosen], requires_grad=True)
    r = torch.tensor([rejected], requires_grad=True)
    losses, _, _, mean_ratio, mean_log_odds = forge_orpo_trainer().odds_ratio_loss(stub_trainer(), c, r)
    losses.sum().backward()
    for value in (losses, mean_ratio, mean_log_odds, c.grad, r.grad):
        assert torch.isfinite(value).all(), (chosen, rejected, value)
    # Above MAX_AVG_LOGP both are read as p = 1 - 1e-6: the hand value at the cap.
    capped = (min(chosen, MAX_AVG_LOGP), min(rejected, MAX_AVG_LOGP))
    expected = log_odds_64(capped[0]) - log_odds_64(capped[1])
    assert float(mean_log_odds.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("chosen, rejected", PAIRS)
def test_forge_orpo_loss_equals_trls_where_trls_is_finite(chosen, rejected):
    from trl.experimental.orpo import ORPOTrainer

    ours = forge_orpo_trainer().odds_ratio_loss(stub_trainer(0.2), torch.tensor([chosen]), torch.tensor([rejected]))
    theirs = ORPOTrainer.odds_ratio_loss(stub_trainer(0.2), torch.tensor([chosen]), torch.tensor([rejected]))
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (a, b)


def test_trl_orpo_gradient_is_nan_near_zero_so_forge_overrides_it():
    """Why forge overrides `odds_ratio_loss`. If this starts failing, TRL has fixed its log1mexp gradient and the
    override in forge_trl/trainers/orpo.py can be dropped."""
    from trl.experimental.orpo import ORPOTrainer

    c = torch.tensor([-1e-8], requires_grad=True)
    r = torch.tensor([-1e-4], requires_grad=True)
    losses = ORPOTrainer.odds_ratio_loss(stub_trainer(), c, r)[0]
    assert torch.isfinite(losses).all()  # the value is fine...
    losses.sum().backward()
    assert torch.isnan(c.grad).any()  # ...its gradient is not
