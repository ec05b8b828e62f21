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


def test_value_clipfrac_counts_only_values_moved_past_the_range():
    # Within the range (|V - V_old| = 0.186 < 0.2), old + (V - old) rounds to a float next to V, and here that
    # makes the "clipped" squared error larger by one rounding step: not a clipped token.
    old = torch.tensor([[-0.12633347511291504]])
    values = torch.tensor([[0.05960638448596001]])
    returns = torch.tensor([[-0.12078950554132462]])
    assert float(old + (values - old)) != float(values)
    _, clipfrac = clipped_value_loss(values, old, returns, torch.ones(1, 1), cliprange_value=0.2)
    assert clipfrac.item() == 0.0


def test_whitening_with_statistics_over_processes_equals_whitening_the_union():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, -1.0, 0.5, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # Two processes holding the same rows: the union is both copies, and each process's `total` doubles.
    union = masked_whiten(torch.cat([values, values]), torch.cat([mask, mask]))[:2]
    assert torch.allclose(masked_whiten(values, mask, total=lambda t: 2 * t), union, atol=1e-6)
    assert not torch.allclose(masked_whiten(values, mask), union, atol=1e-3)  # the local statistics differ


def test_losses_over_the_global_token_count_average_to_the_union_gradient():
    generator = torch.Generator().manual_seed(0)
    logprobs = torch.randn(4, 3, generator=generator).requires_grad_()
    old, advantages = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    values = torch.randn(4, 3, generator=generator).requires_grad_()
    old_values, returns = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])

    def loss(rows, tokens=None):
        pg = clipped_policy_loss(logprobs[rows], old[rows], advantages[rows], mask[rows], 0.2, tokens)
        vf, _ = clipped_value_loss(values[rows], old_values[rows], returns[rows], mask[rows], 0.2, tokens)
        return pg.loss + 0.1 * vf

    union = torch.autograd.grad(loss(slice(0, 4)), (logprobs, values))
    # Two processes with rows 0-1 (4 tokens) and 2-3 (5 tokens): each divides by 9 / 2, and their gradients are
    # averaged, as PPOTrainer does.
    halves = [
        torch.autograd.grad(loss(rows, torch.tensor(9.0 / 2)), (logprobs, values))
        for rows in (slice(0, 2), slice(2, 4))
    ]
    for u, a, b in zip(union, *halves):
        assert torch.allclose((a + b) / 2, u, atol=1e-7)
    # Each process normalising by its own token count instead weights the rows of the shorter half more.
    local = [torch.autograd.grad(loss(rows), (logprobs, values)) for rows in (slice(0, 2), slice(2, 4))]
    assert not torch.allclose((local[0][0] + local[1][0]) / 2, union[0], atol=1e-3)
