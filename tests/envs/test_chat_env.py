"""The batched chat environment: lockstep tokens, turn detection on text, rewards, Gym API."""

from __future__ import annotations

import collections

import pytest
import torch
from gymnasium.utils.env_checker import check_env

from klbudget.base.hf import HFBase
from klbudget.envs.chat import AGENT, ENV, ChatEnv
from klbudget.envs.format import ChatFormat
from klbudget.envs.gym_env import ChatGymEnv


def constant_sentiment(texts):
    return [0.5 for _ in texts]


SHORT = ChatFormat(prompt="Student: Hi!\n\nTeacher:")


def beta_agent_tokens(env: ChatEnv, seed: int = 5) -> collections.Counter:
    """How often β itself writes each agent token in one lockstep episode of `env` (a budget
    agent at budget 0 plays β exactly): the way the learning tests pick a planted token."""
    from klbudget.agent.policy import Actor, Critic
    from klbudget.agent.rollout import run_episode

    d, a = env.base.feature_dim + 2, env.base.num_actions
    g = torch.Generator().manual_seed(0)
    ep = run_episode(env, Actor(d, a), Critic(d, 8), budget=0.0, mode="expected",
                     budget_scale=10.0, generator=g, seed=seed)  # fmt: skip
    tag = set(env.student_tag_ids)  # written by the environment after the separator
    return collections.Counter(
        t["id"] for r in ep.records for t in r["tokens"]
        if t["speaker"] == "agent" and t["id"] not in tag
    )  # fmt: skip


def rare_token(counts: collections.Counter, share: float = 0.012) -> int:
    """The token whose share of `counts` is closest to `share`."""
    n = sum(counts.values())
    return min(counts, key=lambda t: abs(counts[t] / n - share))


def make_env(path, n=4, length=80, **kw) -> ChatEnv:
    base = HFBase(path)
    return ChatEnv(
        base, base.tokenizer, constant_sentiment, n_envs=n, length=length, chat=SHORT, **kw
    )


def test_handover_switches_speaker_and_pays_reply(tiny_model):
    env = make_env(tiny_model, n=2, length=60, max_reply_tokens=5)
    obs, _ = env.reset(seed=0)
    handover = env.text.encode(SHORT.to_student)
    assert obs["agent_turn"].all()
    total = torch.zeros(2)
    for tok in handover:  # both conversations hand over at once: an empty teacher turn
        obs, r, term, trunc, _ = env.step(torch.tensor([tok, tok]))
        total += r
    assert not obs["agent_turn"].any()
    assert env.teacher_turns == [[""], [""]]
    # The student now speaks; at the latest after the cap plus the forced hand-back the
    # teacher gets the turn back, and the reply has been paid (s + 1)/2 = 0.75.
    steps = 0
    while not obs["agent_turn"].all():
        obs, r, term, trunc, _ = env.step(torch.zeros(2, dtype=torch.long))
        total += r
        steps += 1
    assert steps <= 5 + len(env.to_teacher_ids)
    torch.testing.assert_close(total, torch.full((2,), 0.75))
    for i in range(2):
        assert env.transcript(i).endswith(SHORT.to_teacher)
        assert (
            env.speaker[i, len(env.prompt_ids) : len(env.prompt_ids) + len(handover)] == AGENT
        ).all()
        assert env.speaker[i, env.t - 1] == ENV


def test_teacher_turn_cap_hands_over_without_an_action(tiny_model):
    """With max_turn_tokens = 3 a teacher who never ends its turn is handed over after its
    third token: the environment writes the hand-over (no agent action), the turn is
    recorded, and the student speaks; without the cap the same teacher keeps the turn."""
    for cap, handed in ((3, True), (0, False)):
        env = make_env(tiny_model, n=2, length=40, max_turn_tokens=cap)
        obs, _ = env.reset(seed=0)
        a = env.text.encode(" a")[0]
        acted = 0
        for _ in range(3 + len(env.to_student_ids)):
            if obs["agent_turn"].all():
                acted += 1
            obs, *_ = env.step(torch.full((2,), a))
        if handed:
            assert acted == 3  # the hand-over tokens were not the agent's to choose
            assert not obs["agent_turn"].any()
            assert all(len(turns) == 1 and turns[0] == env.text.decode([a] * 3).strip()
                       for turns in env.teacher_turns)  # fmt: skip
            for i in range(2):
                assert env.transcript(i).endswith(SHORT.to_student)
        else:
            assert acted == 3 + len(env.to_student_ids)
            assert obs["agent_turn"].all() and env.teacher_turns == [[], []]


def test_student_reply_ends_at_the_separator(tiny_model):
    """A student model that names the wrong speaker after the separator (as small imitators
    do under speaker names) cannot stall the chat: the environment writes the teacher tag."""
    env = make_env(tiny_model, n=2, length=70)
    obs, _ = env.reset(seed=0)
    for tok in env.text.encode(SHORT.to_student):
        obs, *_ = env.step(torch.tensor([tok, tok]))
    script = env.text.encode(" ok") + env.text.encode("\n\n") + env.text.encode("Student: no")
    env._sample_student = lambda logits: torch.full(  # type: ignore[method-assign]
        (2,), script[min(len(env.convs[0].turn_ids), len(script) - 1)]
    )
    total = torch.zeros(2)
    while not obs["agent_turn"].all():
        obs, r, *_ = env.step(torch.zeros(2, dtype=torch.long))
        total += r
    for i in range(2):
        assert env.transcript(i).endswith("Student: ok\n\nTeacher:"), env.transcript(i)
        assert "Student: no" not in env.transcript(i)
    torch.testing.assert_close(total, torch.full((2,), 0.75))  # the reply " ok" was paid


def test_reply_cap_waits_for_a_half_written_separator(tiny_model):
    """A reply that reaches max_reply_tokens on the first half of the separator is left one
    more token: the model's own second newline ends it (no tripled newline from a hand-back
    written after it); if it goes on instead, the cap hands the turn back at once."""
    for then, tail in (("\n", " ok ok\n\nTeacher:"), ("x", " ok ok\nx\n\nTeacher:")):
        ok = make_env(tiny_model, n=1, length=20).text.encode(" ok")
        cap = 2 * len(ok) + 1  # the reply " ok ok\n" reaches the cap on its newline
        env = make_env(tiny_model, n=2, length=70, max_reply_tokens=cap)
        obs, _ = env.reset(seed=0)
        for tok in env.text.encode(SHORT.to_student):
            obs, *_ = env.step(torch.tensor([tok, tok]))
        script = [*ok, *ok, *env.text.encode("\n"), *env.text.encode(then)]
        script += env.text.encode(" no") * 10
        env._sample_student = lambda logits, s=script, e=env: torch.full(  # type: ignore[method-assign]
            (2,), s[len(e.convs[0].turn_ids)]
        )
        while not obs["agent_turn"].all():
            obs, *_ = env.step(torch.zeros(2, dtype=torch.long))
        for i in range(2):
            assert env.transcript(i).endswith("Student:" + tail), repr(env.transcript(i))


def test_lockstep_length_and_truncation(tiny_model):
    env = make_env(tiny_model, n=3, length=40)
    obs, _ = env.reset(seed=1)
    n_steps = 0
    while True:
        obs, r, term, trunc, _ = env.step(torch.randint(0, 50, (3,)))
        n_steps += 1
        if trunc.all():
            break
    assert env.t == 40 and n_steps == 40 - len(env.prompt_ids)
    assert not term.any()


def test_same_seed_same_episode(tiny_model):
    env = make_env(tiny_model, n=2, length=50)

    def play(seed):
        env.reset(seed=seed)
        g = torch.Generator().manual_seed(seed)
        while True:
            *_, trunc, _ = env.step(torch.randint(0, 300, (2,), generator=g))
            if trunc.all():
                return env.ids.clone()

    assert torch.equal(play(3), play(3))


def test_gymnasium_env_checker(tiny_model):
    env = ChatGymEnv(make_env(tiny_model, n=1, length=40))
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    obs, r, term, trunc, info = env.step(env.action_space.sample())
    assert isinstance(r, float) and info["base_logp"].shape == (env.action_space.n,)


def test_mean_reward_pays_the_mean_of_an_episodes_replies(tiny_model):
    """reward_per = "mean": the increments sum to the mean pay of the episode's replies,
    however many there are; "reply" pays their sum. Both from the same episodes."""
    pay = {}

    def reward(replies):
        out = [float(len(r) % 5) / 4 for r in replies]
        pay.update(zip(replies, out, strict=True))
        return out

    totals = {}
    for per in ("reply", "mean"):
        env = make_env(tiny_model, n=6, length=90, max_reply_tokens=4, reward=reward,
                       reward_per=per)  # fmt: skip
        env.reset(seed=4)
        handover = env.text.encode(SHORT.to_student)
        total, k = torch.zeros(6), 0
        while env.t < env.length:  # the teacher hands over at once, every turn
            tok = handover[k % len(handover)] if env.agent_turn().any() else 0
            k += int(bool(env.agent_turn().any()))
            _, r, *_ = env.step(torch.full((6,), tok))
            total += r
        pays = [[pay[text] for _, text in env.replies[i]] for i in range(6)]
        assert all(len(p) >= 2 for p in pays)  # several replies per episode
        totals[per] = (total, pays)
    total, pays = totals["reply"]
    torch.testing.assert_close(total, torch.tensor([sum(p) for p in pays]))
    total, pays = totals["mean"]
    torch.testing.assert_close(total, torch.tensor([sum(p) / len(p) for p in pays]))
    with pytest.raises(ValueError, match="reward_per"):
        make_env(tiny_model, reward_per="total")
