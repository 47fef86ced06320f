"""The update back-propagates each minibatch a few rows at a time (ppo.microbatch): the
same gradient as the whole minibatch at once, so the same parameters after the update."""

from __future__ import annotations

import torch

from klbudget.agent.policy import Actor, Critic
from klbudget.agent.ppo import Batch, HiddenLogp, micro_rows, ppo_update
from klbudget.config import PPOConfig


def _batch(actor: Actor, m: int, d: int, v: int) -> Batch:
    obs = torch.randn(m, d)
    base = torch.log_softmax(2 * torch.randn(m, v), -1)
    left = torch.rand(m) * 2
    with torch.no_grad():
        played = actor(obs, base, left)
    assert bool(((played.alpha > 0) & (played.alpha < 1)).any())  # the solve is exercised
    actions = torch.multinomial(played.log_x.exp(), 1).squeeze(-1)
    return Batch(
        obs=obs,
        base_logp=base,
        budget_left=left,
        actions=actions,
        logp_old=played.log_x.gather(-1, actions[:, None]).squeeze(-1),
        values_old=torch.zeros(m),
        returns=torch.randn(m),
        alpha_old=played.alpha,
    )


def _update(microbatch: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    torch.manual_seed(0)
    m, d, v = 64, 6, 12
    actor = Actor(d, v)
    with torch.no_grad():
        actor.z.weight.normal_(0.0, 0.5)
        actor.s.bias.fill_(1.0)
    critic = Critic(d, 8)
    batch = _batch(actor, m, d, v)
    # Plain SGD without clipping: a part weighted wrongly would show in the parameters.
    cfg = PPOConfig(epochs=2, minibatch=32, microbatch=microbatch, max_grad_norm=1e9)
    stats = ppo_update(
        actor, critic,
        torch.optim.SGD(actor.parameters(), lr=0.5), torch.optim.SGD(critic.parameters(), lr=0.1),
        batch, cfg, kl_target_coef=0.5, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    params = {f"actor.{k}": p.detach().clone() for k, p in actor.named_parameters()}
    params.update({f"critic.{k}": p.detach().clone() for k, p in critic.named_parameters()})
    return params, stats


def test_parts_of_a_minibatch_give_the_whole_minibatch_update() -> None:
    whole, whole_stats = _update(0)  # 12 actions: one part per minibatch
    for rows in (1, 7):  # 32 = 4·7 + 4: parts of unequal size
        parts, part_stats = _update(rows)
        for k in whole:
            torch.testing.assert_close(parts[k], whole[k], rtol=1e-5, atol=1e-6)
        assert part_stats.keys() == whole_stats.keys()
        for k in whole_stats:
            assert abs(part_stats[k] - whole_stats[k]) <= 1e-5 * (1 + abs(whole_stats[k])), k


def test_update_moves_the_parameters() -> None:
    torch.manual_seed(0)
    before = Actor(6, 12)
    with torch.no_grad():
        before.z.weight.normal_(0.0, 0.5)
    after, _ = _update(7)
    assert (after["actor.z.weight"] - before.z.weight).abs().max() > 1e-3


def test_automatic_part_size_follows_the_vocabulary() -> None:
    assert micro_rows(0, torch.zeros(2, 4096)) == 1536  # the demo world: one part of 512
    compact = HiddenLogp(torch.zeros(2, 4), lambda h: torch.zeros(len(h), 49_152))
    assert micro_rows(0, compact) == 128  # SmolLM2's vocabulary
    assert micro_rows(0, torch.empty(0, 10**8)) == 1
    assert micro_rows(5, torch.zeros(2, 49_152)) == 5
