"""The bound behind "don't do anything I mightn't do", on real episodes of the small world.

The ensemble holds the tiny neural imitator and τ itself (TauBase). While τ is plausible,
ν_α ≤ τ pointwise, so for any agent distribution π over tokens KL(π‖ν_α) ≥ KL(π‖τ); and a
base that plays ν_α with help (τ writes the token) never leaves τ's support, while the
imitator alone does.
"""

from __future__ import annotations

import math

import torch

from klbudget.base.ensemble import EnsembleBase
from klbudget.base.hf import HFBase
from klbudget.core.kl import kl_exact
from klbudget.core.sampling import sample_categorical
from klbudget.envs.chat import ChatEnv
from klbudget.world.oracle import TauBase, TauOracle
from klbudget.world.token_model import TeacherTokenModel


def test_kl_to_nu_bounds_kl_to_tau_and_help_keeps_tau_support(small_world, tiny_folder) -> None:
    torch.manual_seed(0)
    student = HFBase(tiny_folder)
    v = student.vocab_size
    tm = TeacherTokenModel(small_world.teacher, student.tokenizer, small_world.fmt, v)
    base = EnsembleBase([student, TauBase(tm)], kind="pessimistic", alpha=0.01)
    oracle = TauOracle(tm, base.num_actions, help_mode="token")
    env = ChatEnv(
        base, student.tokenizer, lambda texts: [0.0] * len(texts), n_envs=4, length=120,
        chat=small_world.fmt, demonstrator=oracle.help,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    obs, _ = env.reset(seed=2)
    checked = finite = help_steps = 0
    off_mass_imitator, off_mass_played = [], []
    while env.t < env.length:
        rows = torch.nonzero(obs["agent_turn"]).squeeze(-1)
        actions = torch.zeros(env.n_envs, dtype=torch.long)
        if len(rows):
            assert base.plausible[rows, 1].all(), "τ left the plausible set"
            log_nu = obs["base_logp"][rows].double()  # (R, V + 1)
            log_tau = oracle(env, rows)[:, :v].double()
            assert torch.isfinite(log_tau).any(-1).all()  # ν ≤ τ keeps every prefix in support
            assert (log_nu[:, :v] <= log_tau + 1e-6).all()  # ν_α ≤ τ, token by token
            for r in range(len(rows)):
                support = torch.isfinite(log_tau[r])
                for subset in (support, torch.rand(v, generator=gen) < 0.05):
                    if not subset.any():
                        continue
                    w = torch.distributions.Gamma(0.3, 1.0).sample((v,)).double() * subset
                    log_pi = torch.log(w / w.sum())
                    kl_nu = float(kl_exact(log_pi, log_nu[r, :v]))
                    kl_tau = float(kl_exact(log_pi, log_tau[r]))
                    assert kl_nu >= kl_tau - 1e-6
                    checked += 1
                    finite += math.isfinite(kl_tau)
            # Played token distribution with help: ν_v + help·τ_v. Outside τ's support it is 0.
            played = torch.logaddexp(log_nu[:, :v], log_nu[:, v:] + log_tau).exp()
            outside = ~torch.isfinite(log_tau)
            off_mass_played += (played * outside).sum(-1).tolist()
            imit = base._member_logp[rows, 0].double().exp()
            off_mass_imitator += (imit * outside).sum(-1).tolist()
            actions[rows] = sample_categorical(obs["base_logp"][rows], gen)
            help_steps += int((actions[rows] == v).sum())
        obs, *_ = env.step(actions)
    assert checked > 200 and finite > 100
    assert help_steps > 0 and env.helped.sum() == help_steps
    assert max(off_mass_played) < 1e-6
    assert sum(off_mass_imitator) / len(off_mass_imitator) > 1e-3
    turns = [u for conv in env.teacher_turns for u in conv]
    assert turns and all(tm.in_support([], u) for u in turns)
