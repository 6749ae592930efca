"""Per-tower feed-forward networks: :class:`SwiGLU` and the mixture of SwiGLU experts :class:`MoESwiGLU`.

Both are FFN modules behind the same routing (:func:`routed_ffn` gives them one calling convention);
an MoE tower adds learned routing inside a modality on top of MoT's rule-based routing by modality.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """Gated feed-forward network: ``W_out(silu(x W_gate) * x W_up)``, gate and up fused in one matmul."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w_in = nn.Linear(dim, 2 * hidden_dim, bias=False)
        self.w_out = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(F.silu(gate) * up)


@dataclass
class RouterStats:
    """Sums over the (present) tokens one MoE tower saw in one layer, merged across its runs.

    ``tokens``: number of tokens (0-d); ``assigned[e]``: routing assignments to expert ``e``, each token
    contributing ``1 / top_k`` per chosen expert (so the load sums to 1); ``probability[e]``: router
    probabilities of ``e`` summed over tokens.
    """

    tokens: torch.Tensor
    assigned: torch.Tensor
    probability: torch.Tensor

    def merge(self, other: RouterStats) -> RouterStats:
        return RouterStats(
            self.tokens + other.tokens, self.assigned + other.assigned, self.probability + other.probability
        )

    def load(self) -> torch.Tensor:
        """Fraction of routing assignments per expert ``[E]`` (zeros when the tower had no token)."""
        return self.assigned / self.tokens.clamp_min(1)

    def balance_loss(self) -> torch.Tensor:
        """Switch-style ``E * sum_e load_e * mean_prob_e``: 1 when balanced, up to E when collapsed.

        ``load`` comes from a hard top-k choice and carries no gradient; the gradient flows through the
        mean router probability, pushing probability away from overloaded experts.
        """
        mean_probability = self.probability / self.tokens.clamp_min(1)
        return self.assigned.numel() * (self.load().detach() * mean_probability).sum()


class _LastForward(dict):
    """Per-forward statistics kept on a module: they hold autograd graph pieces, which ``deepcopy``
    refuses (EMA/SWA copies of the model) and a checkpoint need not carry, so copies start empty."""

    def __deepcopy__(self, memo) -> _LastForward:
        return _LastForward()

    def __reduce__(self):
        return (_LastForward, ())


class MoESwiGLU(nn.Module):
    """Mixture of SwiGLU experts with a learned linear router (softmax, top-k, gates renormalised to 1).

    No token is dropped: every token gets its top-k experts. All experts are evaluated densely on the
    tower's tokens and combined with the (mostly zero) gates: two matmuls as wide as all experts
    together, static shapes, no gather/scatter and no host sync -- FLOPs traded for shapes that suit the
    fixed-layout fast path (measured FLOPs grow with ``n_experts``; the parameters a token *uses*, as
    :func:`~mot_neuro.model.accounting.count_parameters` reports, are the router and ``top_k`` experts).

    Expert ``e``'s weights ``w_in[e]`` (``[2 * hidden, dim]``) and ``w_out[e]`` (``[dim, hidden]``) are laid
    out like :class:`SwiGLU`'s, so a dense FFN copies into every expert (:meth:`load_from_dense`).

    With ``top_k=1`` the renormalised gate is exactly 1: the router then learns only from the balancing
    loss, not from the task loss (Switch leaves the top-1 gate unnormalised for that reason); ``top_k>=2``
    lets the task loss shape the routing.
    """

    def __init__(self, dim: int, hidden_dim: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"need 1 <= top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}")
        self.dim, self.hidden_dim, self.n_experts, self.top_k = dim, hidden_dim, n_experts, top_k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(n_experts, 2 * hidden_dim, dim))
        self.w_out = nn.Parameter(torch.empty(n_experts, dim, hidden_dim))
        # earlier[e, j]: expert j comes before e, so it wins a tie (exactly top_k experts per token).
        self.register_buffer("earlier", torch.ones(n_experts, n_experts, dtype=torch.bool).tril(-1), persistent=False)

    def expert_parameters(self) -> int:
        """Parameters of one expert."""
        return 3 * self.dim * self.hidden_dim

    def activated_parameters(self) -> int:
        """Parameters one token uses: the router and its ``top_k`` experts."""
        return self.router.weight.numel() + self.top_k * self.expert_parameters()

    @torch.no_grad()
    def load_from_dense(self, ffn: SwiGLU) -> None:
        """Every expert becomes a copy of ``ffn``: with gates summing to 1 the output then equals ``ffn``'s."""
        if ffn.w_out.weight.shape != self.w_out.shape[1:]:
            raise ValueError(
                f"cannot copy a SwiGLU of width {ffn.w_out.weight.shape[1]} into experts of width {self.hidden_dim}"
            )
        self.w_in.copy_(ffn.w_in.weight.expand_as(self.w_in))
        self.w_out.copy_(ffn.w_out.weight.expand_as(self.w_out))

    def _chosen(self, logits: torch.Tensor) -> torch.Tensor:
        """Boolean ``[..., E]``: the top-k experts of each token, by rank (no topk indices, no scatter)."""
        if self.top_k == self.n_experts:
            return torch.ones_like(logits, dtype=torch.bool)
        row, col = logits.unsqueeze(-1), logits.unsqueeze(-2)  # [..., e, 1] vs [..., 1, j]
        ahead = (col > row) | ((col == row) & self.earlier)
        return ahead.sum(-1) < self.top_k

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, RouterStats]:
        """``x [..., dim]`` -> (output ``[..., dim]``, router statistics).

        ``weight [..., 1]`` (bool or 0/1) marks the tokens that count in the statistics (absent tokens are
        computed but do not count); ``None`` = all of them.
        """
        logits = self.router(x).float()  # routing decisions in fp32 also under autocast
        probs = logits.softmax(-1)
        chosen = self._chosen(logits)
        gates = probs * chosen
        gates = gates / gates.sum(-1, keepdim=True)
        gate, up = F.linear(x, self.w_in.flatten(0, 1)).unflatten(-1, (self.n_experts, 2, self.hidden_dim)).unbind(-2)
        mixed = F.silu(gate) * up * gates.unsqueeze(-1).to(up.dtype)  # [..., E, hidden]
        # sum_e gate_e * W_out[e] a_e is one matmul against the experts' output weights side by side.
        out = F.linear(mixed.flatten(-2), self.w_out.transpose(0, 1).flatten(1))

        probs, chosen = probs.reshape(-1, self.n_experts), chosen.reshape(-1, self.n_experts).to(probs.dtype)
        if weight is None:
            tokens = probs.new_full((), float(probs.shape[0]))
        else:
            w = weight.reshape(-1, 1).to(probs.dtype)
            probs, chosen, tokens = probs * w, chosen * w, w.sum()
        return out, RouterStats(tokens, chosen.sum(0) / self.top_k, probs.sum(0))


def routed_ffn(ffn: nn.Module, x: torch.Tensor, weight: torch.Tensor | None) -> tuple[torch.Tensor, RouterStats | None]:
    """Any FFN tower on a run of tokens: ``(output, router statistics or None)``.

    ``weight [..., 1]`` marks the tokens that count in an MoE tower's statistics (``None`` = all).
    """
    if isinstance(ffn, MoESwiGLU):
        return ffn(x, weight)
    return ffn(x), None
