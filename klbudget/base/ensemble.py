"""Ensembles of base policies: the Bayesian mixture ξ and the pessimistic imitator ν_α.

docs/design.md, "The question", "Pessimistic bases", for neural models. K members (``BasePolicy``
objects over one vocabulary, typically imitators fitted with different seeds on bootstrap resamples
of the demonstrations) stand in for the model class. Each conversation carries a posterior over
the members,

    log w_m(h) = log prior_m + Σ_{t ∈ D(h)} log p_m(x_t | x_{<t})  − log-normaliser,

where ``prior_m`` already holds the evidence of the demonstrations (the caller builds it, see
:func:`demo_log_prior`) and D(h) is the set of tokens of the current transcript that count
as evidence about the demonstrator: with ``update_on="demonstrator"`` (the default) only
tokens the demonstrator wrote when asked for help; with ``update_on="teacher"`` every teacher
token, the agent's own included. The default follows the theory lab
(``klbudget.theory.imitators``): the agent's own tokens are no evidence about τ, and if they
counted, the agent could vote members out and pick its own base.

Plausibility rule (the same as the theory lab's): M^α(h) = {m : w_m(h) ≥ α}, a threshold on
the posterior weight. The member with the largest weight always has w ≥ 1/K, so M^α is
never empty when α ≤ 1/K.

* ``kind="bayes"``: ξ(v | h) = Σ_m w_m(h) p_m(v | h); actions are the V tokens.
* ``kind="pessimistic"``: ν_α(v | h) = min_{m ∈ M^α(h)} p_m(v | h) for each token v, and one
  extra action, *help*, with the leftover mass 1 − Σ_v ν_α(v | h). Actions are V + 1; the
  environment hands a help step to the demonstrator (``klbudget.envs.chat``).

The environment (student) logits and the agent's features come from member 0, so the agent
sees the same world and the same student whichever base it is held to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from klbudget.base.protocol import WRITER_AGENT, WRITER_DEMONSTRATOR, BasePolicy, BaseStep

KINDS = ("bayes", "pessimistic")
UPDATE_ON = ("demonstrator", "teacher")


def demo_log_prior(heldout_logloss: Sequence[float], demo_tokens: float) -> Tensor:
    """log prior over members from their held-out log-loss on the demonstrations.

    Uniform prior times the likelihood of ``demo_tokens`` teacher tokens at each member's mean
    held-out log-loss ℓ_m: log prior_m = −demo_tokens·ℓ_m, normalised. ``demo_tokens`` tempers
    the evidence: every held-out token at face value (tens of thousands) would hand the whole
    posterior to whichever member happened to fit best by a hundredth of a nat per token.
    """
    loss = torch.as_tensor(list(heldout_logloss), dtype=torch.float64)
    logw = -float(demo_tokens) * loss
    return logw - torch.logsumexp(logw, 0)


def pessimistic_logp(member_logp: Tensor, plausible: Tensor) -> Tensor:
    """(..., V + 1): log ν_α over tokens from (..., K, V) member log-probs, then log help.

    ``plausible`` is (..., K) boolean. Computed in float64: the help mass is a difference of
    numbers near 1.
    """
    lp = member_logp.double().masked_fill(~plausible[..., None], math.inf)
    log_nu = lp.amin(-2)  # (..., V)
    help_mass = (1.0 - torch.exp(log_nu).sum(-1)).clamp(min=0.0)
    return torch.cat([log_nu, torch.log(help_mass)[..., None]], -1)


def bayes_logp(member_logp: Tensor, log_w: Tensor) -> Tensor:
    """(..., V): log Σ_m w_m p_m from (..., K, V) member log-probs and (..., K) log weights."""
    return torch.logsumexp(log_w.double()[..., None] + member_logp.double(), -2)


class EnsembleBase:
    """`BasePolicy` over K member policies (module docstring)."""

    def __init__(
        self,
        members: Sequence[BasePolicy],
        *,
        kind: str,
        log_prior: Tensor | None = None,
        alpha: float = 0.05,
        update_on: str = "demonstrator",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if update_on not in UPDATE_ON:
            raise ValueError(f"update_on must be one of {UPDATE_ON}, got {update_on!r}")
        if not members:
            raise ValueError("an ensemble needs at least one member")
        vocab = {m.vocab_size for m in members}
        if len(vocab) != 1:
            raise ValueError(f"ensemble members disagree on the vocabulary size: {sorted(vocab)}")
        k = len(members)
        if not 0 < alpha <= 1 / k:
            raise ValueError(f"alpha must be in (0, 1/K] = (0, {1 / k:.4g}], got {alpha}")
        self.members = list(members)
        self.kind = kind
        self.alpha = float(alpha)
        self.update_on = update_on
        prior = torch.zeros(k, dtype=torch.float64) if log_prior is None else log_prior.double()
        if prior.shape != (k,):
            raise ValueError(f"log_prior must have shape ({k},), got {tuple(prior.shape)}")
        self.log_prior = prior - torch.logsumexp(prior, 0)
        self.vocab_size = members[0].vocab_size
        self.num_actions = self.vocab_size + (kind == "pessimistic")
        self.feature_dim = members[0].feature_dim
        self.max_length = min(m.max_length for m in members)
        self.tokenizer = getattr(members[0], "tokenizer", None)
        self.log_w: Tensor | None = None  # (N, K) per-conversation log posterior
        self.plausible: Tensor | None = None  # (N, K) at the current position
        self._member_logp: Tensor | None = None  # (N, K, V) at the current position
        self._writers: Tensor | None = None

    def output_embedding(self) -> Tensor:
        """Member 0's output embedding (V, d) (members share the tokenizer)."""
        return self.members[0].output_embedding()

    @property
    def member_logp(self) -> Tensor:
        """(N, K, V) each member's log-probabilities at the current position."""
        if self._member_logp is None:
            raise RuntimeError("call reset() before reading member_logp")
        return self._member_logp

    # -- protocol ------------------------------------------------------------------------
    def reset(self, input_ids: Tensor, capacity: int | None = None) -> BaseStep:
        steps = [m.reset(input_ids, capacity) for m in self.members]
        self.log_w = self.log_prior.expand(int(input_ids.shape[0]), -1).clone()
        self._writers = None
        return self._combine(steps)

    def observe(self, writers: Tensor) -> None:
        """Who wrote the tokens of the next `step` (WRITER_* codes, shape (N,))."""
        self._writers = writers

    def step(self, tokens: Tensor) -> BaseStep:
        if self.log_w is None or self._member_logp is None:
            raise RuntimeError("call reset() before step()")
        if self._writers is not None:
            counted = [WRITER_DEMONSTRATOR] + (
                [WRITER_AGENT] if self.update_on == "teacher" else []
            )
            evidence = torch.isin(self._writers.cpu(), torch.tensor(counted))
            if evidence.any():
                self._update(evidence, tokens.cpu())
            self._writers = None
        return self._combine([m.step(tokens) for m in self.members])

    def score(self, input_ids: Tensor) -> Tensor:
        """Teacher-forced log-probabilities under the prior weights: log ξ, or log ν_α (help
        excluded, so the values are those of a sub-probability)."""
        lp = torch.stack([m.score(input_ids) for m in self.members], -1).double()  # (N, T-1, K)
        if self.kind == "bayes":
            return torch.logsumexp(lp + self.log_prior, -1)
        plausible = self.log_prior >= math.log(self.alpha)
        return lp.masked_fill(~plausible, math.inf).amin(-1)

    # -- internals -----------------------------------------------------------------------
    def _update(self, rows: Tensor, tokens: Tensor) -> None:
        assert self.log_w is not None and self._member_logp is not None
        lp = self._member_logp[rows].gather(
            -1, tokens[rows].view(-1, 1, 1).expand(-1, len(self.members), 1)
        )
        new = self.log_w[rows] + lp.squeeze(-1).double()
        norm = torch.logsumexp(new, -1, keepdim=True)
        # A token every member calls impossible carries no usable evidence: keep the weights.
        ok = torch.isfinite(norm).squeeze(-1)
        upd = self.log_w[rows]
        upd[ok] = new[ok] - norm[ok]
        self.log_w[rows] = upd

    def _combine(self, steps: list[BaseStep]) -> BaseStep:
        assert self.log_w is not None
        v = self.vocab_size
        member_logp = torch.stack([s.logp[:, :v].cpu() for s in steps], 1)  # (N, K, V)
        self._member_logp = member_logp
        self.plausible = self.log_w >= math.log(self.alpha)
        if self.kind == "bayes":
            logp = bayes_logp(member_logp, self.log_w)
        else:
            logp = pessimistic_logp(member_logp, self.plausible)
        first = steps[0]
        return BaseStep(env_logits=first.env_logits, logp=logp.float(), features=first.features)
