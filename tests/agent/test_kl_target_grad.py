"""The (KL(x‖β) − k)² term: by default it trains the scalar head only (the paper's mixture),
with kl_target_grad = "both" it also moves the proposal logits z."""

from __future__ import annotations

import torch

from klbudget.agent.policy import Actor, Critic
from klbudget.agent.ppo import Batch, ppo_update
from klbudget.config import PPOConfig


def one_penalty_step(grad: str) -> tuple[Actor, Actor]:
    torch.manual_seed(0)
    m, d, v = 64, 6, 12
    actor = Actor(d, v)
    with torch.no_grad():  # a proposal that costs less than k: α = 1 and KL(a‖β) < k
        actor.z.weight.normal_(0.0, 0.05)
        actor.s.bias.fill_(3.0)
    before = Actor(d, v)
    before.load_state_dict(actor.state_dict())
    critic = Critic(d, 8)
    obs = torch.randn(m, d)
    base = torch.log_softmax(torch.randn(m, v), -1)
    with torch.no_grad():
        played = actor(obs, base, torch.full((m,), 5.0))
    actions = torch.multinomial(played.log_x.exp(), 1).squeeze(-1)
    batch = Batch(
        obs=obs,
        base_logp=base,
        budget_left=torch.full((m,), 5.0),
        actions=actions,
        logp_old=played.log_x.gather(-1, actions[:, None]).squeeze(-1),
        values_old=torch.zeros(m),
        returns=torch.zeros(m),  # no advantage: only the penalty (and entropy) can move z
    )
    cfg = PPOConfig(epochs=1, minibatch=m, ent_coef=0.0, max_grad_norm=1e9, actor_lr=1e-2)
    ppo_update(
        actor, critic,
        torch.optim.SGD(actor.parameters(), lr=1e-2), torch.optim.SGD(critic.parameters(), lr=0.0),
        batch, cfg, kl_target_coef=1.0, kl_target_grad=grad, generator=torch.Generator(),
    )  # fmt: skip
    return before, actor


def test_scalar_only_leaves_the_proposal_alone() -> None:
    before, after = one_penalty_step("scalar")
    torch.testing.assert_close(after.z.weight, before.z.weight, rtol=0, atol=0)
    torch.testing.assert_close(after.z.bias, before.z.bias, rtol=0, atol=0)
    assert not torch.equal(after.s.bias, before.s.bias)  # k moved toward KL(a‖β)
    assert after.s.bias.item() < before.s.bias.item()


def test_both_moves_the_proposal_too() -> None:
    before, after = one_penalty_step("both")
    assert (after.z.weight - before.z.weight).abs().max() > 1e-6
    assert after.s.bias.item() < before.s.bias.item()
