"""PPO's math against small hand-computed cases."""

import math

import pytest
import torch

from forge_trl.rl.ppo_math import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    masked_mean,
    masked_whiten,
    per_token_rewards,
)


def test_gae_matches_hand_computation_and_ignores_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last position is padding after the stop token
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # t=2: delta = 1 - 0.3 = 0.7 (V past the end is 0)             -> A2 = 0.7
    # t=1: delta = 0 + 0.9*0.3 - 0.4 = -0.13; A1 = -0.13 + 0.45*0.7 = 0.185
    # t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14; A0 = -0.14 + 0.45*0.185 = -0.05675
    assert adv[0].tolist() == pytest.approx([-0.05675, 0.185, 0.7, 0.0])
    assert ret[0].tolist() == pytest.approx([0.44325, 0.585, 1.0, 0.0])


def test_masked_whiten_uses_only_real_tokens():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 2, unbiased variance 1 -> (-1, 0, 1); padding stays 0
    assert masked_whiten(values, mask)[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert masked_mean(values, mask).item() == pytest.approx(2.0)


def test_per_token_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.2, 0.1, 0.4], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = per_token_rewards(torch.tensor([1.0, -2.0]), kl, mask, kl_coef=0.5)
    assert rewards.flatten().tolist() == pytest.approx([-0.1, -0.05, 0.8, -2.25, 0.0, 0.0])


def test_clipped_policy_loss_hand_values():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    out = clipped_policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped) -> mean -0.2
    assert out.loss.item() == pytest.approx(-0.2)
    assert out.clipfrac.item() == pytest.approx(1.0)
    assert out.approx_kl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)


def test_clipped_value_loss_hand_values():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[2.0, 1.0]])
    loss, clipfrac = clipped_value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 0: unclipped (1-2)^2 = 1, clipped V = 0.7 -> 1.69 -> 1.69; token 1: 1 vs 1 -> 1. 0.5 * mean = 0.6725
    assert loss.item() == pytest.approx(0.6725)
    assert clipfrac.item() == pytest.approx(0.5)


def test_adaptive_kl_controller_moves_towards_target():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=100)
    controller.update(current_kl=12.0, episodes=10)  # error clipped to +0.2 -> x1.02
    assert controller.value == pytest.approx(0.102)
    controller.update(current_kl=0.0, episodes=10)  # error -0.2 -> x0.98
    assert controller.value == pytest.approx(0.102 * 0.98)
