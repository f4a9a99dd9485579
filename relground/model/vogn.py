"""Visual Object Graph Network (paper Sec. 3.2.3, Eq. 5-8): one round of message passing between phrases
linked by a parsed relation, written back into each phrase's top-K box features."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from relground.model.layers import masked_softmax


def relation_adjacency(relation_index: Tensor, phrase_valid: Tensor) -> Tensor:
    """Undirected phrase graph of every batch item.

    Args:
        relation_index (Tensor[R, 3]): long (batch item, subject phrase, object phrase).
        phrase_valid (Tensor[B, P]): bool.

    Returns:
        Tensor[B, P, P]: bool, True where a relation links i and j in either direction; no self-loops, and
        edges touching an invalid phrase are dropped.
    """
    B, P = phrase_valid.shape
    adjacency = torch.zeros(B, P, P, dtype=torch.bool, device=phrase_valid.device)
    if relation_index.numel():
        item, subject, obj = relation_index.to(phrase_valid.device).unbind(1)
        adjacency[item, subject, obj] = True
        adjacency[item, obj, subject] = True
    adjacency &= phrase_valid[:, :, None] & phrase_valid[:, None, :]
    adjacency &= ~torch.eye(P, dtype=torch.bool, device=phrase_valid.device)
    return adjacency


class VisualObjectGraph(nn.Module):
    """Message passing over the relation graph.

    ``authors`` variant (the released code)::

        c_i = sum_k a_ik x_ik;   g_ij = ReLU(<W c_i, W c_j> / sqrt(D_w));   w_ij = softmax_{j in N(i)} g_ij
        m_i = ReLU(Linear(sum_j w_ij c_j));   x'_ik = x_ik + a_ik m_i

    ``paper`` variant (Eq. 5-8)::

        z_i = sum_k a_ik x_ik;   w_ij = softmax_{j in N(i)} <F_M(z_i), F_M(z_j)> / sqrt(d)
        z'_i = z_i + sum_j w_ij F_M(z_j);   x'_ik = x_ik + a_ik z'_i

    (the 1/sqrt(d) keeps the softmax from saturating at d = 1024; Eq. 7 has none). With ``weights="uniform"``
    w_ij = 1 / |N(i)| (the "w/o attention" ablation). A node without neighbours receives no message
    (m_i = 0, z'_i = z_i).

    Args:
        hidden_dim: d.
        key_dim: width of W (authors: 512).
        variant: ``authors`` or ``paper``.
        weights: ``attention`` or ``uniform``.
    """

    def __init__(self, hidden_dim: int, key_dim: int = 512, variant: str = "authors", weights: str = "attention"):
        super().__init__()
        if variant not in ("authors", "paper"):
            raise ValueError(f"model.vogn_variant must be 'authors' or 'paper', got {variant!r}")
        if weights not in ("attention", "uniform"):
            raise ValueError(f"model.vogn_weights must be 'attention' or 'uniform', got {weights!r}")
        self.variant = variant
        self.uniform = weights == "uniform"
        if variant == "authors":
            self.key = nn.Linear(hidden_dim, key_dim) if not self.uniform else None
            self.message = nn.Linear(hidden_dim, hidden_dim)
            self.scale = 1.0 / math.sqrt(key_dim)
        else:
            self.message = nn.Sequential(
                nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim)
            )
            self.scale = 1.0 / math.sqrt(hidden_dim)

    def edge_weights(self, keys: Tensor, adjacency: Tensor, gate: bool) -> Tensor:
        """w [B, P, P] from node keys [B, P, D]: masked softmax over neighbours (or 1/degree if uniform)."""
        if self.uniform:
            edges = adjacency.to(keys.dtype)
            return edges / edges.sum(-1, keepdim=True).clamp(min=1)
        affinity = torch.bmm(keys, keys.transpose(1, 2)) * self.scale  # [B, P, P]
        if gate:
            affinity = torch.relu(affinity)
        return masked_softmax(affinity, adjacency)  # rows without neighbours: all zero

    def forward(self, features: Tensor, attention: Tensor, adjacency: Tensor) -> Tensor:
        """
        Args:
            features (Tensor[B, P, K, d]): x_o of each phrase's top-K boxes.
            attention (Tensor[B, P, K]): stage-1 attention of those boxes (not renormalised; 0 in empty slots).
            adjacency (Tensor[B, P, P]): bool, from :func:`relation_adjacency`.

        Returns:
            Tensor[B, P, K, d]: x'_o, context-enriched features.
        """
        nodes = torch.einsum("bpk,bpkd->bpd", attention, features)  # [B, P, d], Eq. 5
        has_neighbour = adjacency.any(-1, keepdim=True)  # [B, P, 1]
        if self.variant == "authors":
            keys = self.key(nodes) if self.key is not None else nodes
            weights = self.edge_weights(keys, adjacency, gate=True)  # [B, P, P]
            update = torch.relu(self.message(torch.bmm(weights, nodes)))  # [B, P, d]
            update = update * has_neighbour  # no relation, no message
        else:
            messages = self.message(nodes)  # F_M(z) [B, P, d]
            weights = self.edge_weights(messages, adjacency, gate=False)
            update = nodes + torch.bmm(weights, messages)  # z'_i, Eq. 6
        return features + attention[..., None] * update[:, :, None, :]  # Eq. 8
