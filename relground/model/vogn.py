"""Visual Object Graph Network (paper Sec. 3.2.3, Eq. 5-8): one round of message passing between phrases
linked by a parsed relation, written back into each phrase's top-K box features."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from relground.model.layers import masked_softmax, softmax_with_mask


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
        zero_gates: ``authors`` variant: ``keep`` a gate-0 edge in the softmax (logit 0) or ``drop`` it, as the
            released code (``model.vogn_zero_gates``, docs/fidelity.md D4): its softmax runs over the gates != 0, and
            a phrase without such an edge in an item with at least one relation gets m_i = ReLU(b) of the message
            layer (the softmax of an empty row is 0, the layer's bias remains).
        epsilon: the authors' softmax epsilon (``model.softmax_epsilon``); 0 = exact.
    """

    def __init__(
        self,
        hidden_dim: int,
        key_dim: int = 512,
        variant: str = "authors",
        weights: str = "attention",
        zero_gates: str = "keep",
        epsilon: float = 0.0,
    ):
        super().__init__()
        if zero_gates not in ("keep", "drop"):
            raise ValueError(f"model.vogn_zero_gates must be 'keep' or 'drop', got {zero_gates!r}")
        self.drop_zero_gates = zero_gates == "drop"
        self.softmax = softmax_with_mask(epsilon)
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
            if self.drop_zero_gates:
                adjacency = adjacency & (affinity != 0)
        return self.softmax(affinity, adjacency)  # rows without neighbours: all zero

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
            # no relation, no message; the authors': every phrase of an item with a relation gets the message
            has_neighbour = adjacency.flatten(1).any(1)[:, None, None] if self.drop_zero_gates else has_neighbour
            update = update * has_neighbour
        else:
            messages = self.message(nodes)  # F_M(z) [B, P, d]
            weights = self.edge_weights(messages, adjacency, gate=False)
            update = nodes + torch.bmm(weights, messages)  # z'_i, Eq. 6
        return features + attention[..., None] * update[:, :, None, :]  # Eq. 8


def relative_geometry(source: Tensor, target: Tensor) -> Tensor:
    """Where ``target`` lies relative to ``source``, scale-free (the R-CNN box-delta parametrisation).

    Args:
        source (Tensor[..., 4]): xyxy boxes.
        target (Tensor[..., 4]): xyxy boxes, broadcastable to ``source``.

    Returns:
        Tensor[..., 4]: ((cx_t - cx_s) / w_s, (cy_t - cy_s) / h_s, log(w_t / w_s), log(h_t / h_s)); widths and
        heights below 1 pixel count as 1 (empty slots give finite values).
    """
    ws = (source[..., 2] - source[..., 0]).clamp(min=1.0)
    hs = (source[..., 3] - source[..., 1]).clamp(min=1.0)
    wt = (target[..., 2] - target[..., 0]).clamp(min=1.0)
    ht = (target[..., 3] - target[..., 1]).clamp(min=1.0)
    # Corner differences first: exact zero for the same box, no cancellation of large coordinates.
    dx = ((target[..., 0] - source[..., 0]) + (target[..., 2] - source[..., 2])) / (2 * ws)
    dy = ((target[..., 1] - source[..., 1]) + (target[..., 3] - source[..., 3])) / (2 * hs)
    return torch.stack((dx, dy, torch.log(wt / ws), torch.log(ht / hs)), dim=-1)


def candidate_pair_geometry(boxes: Tensor, attention: Tensor, relation_index: Tensor) -> tuple[Tensor, Tensor]:
    """Every (subject box, object box) pair of each relation's two phrases, for ``model.relation_geometry``.

    Args:
        boxes (Tensor[B, P, K, 4]): each phrase's top-K boxes, xyxy.
        attention (Tensor[B, P, K]): the attention on them (alpha^f).
        relation_index (Tensor[R, 3]): long (batch item, subject phrase, object phrase).

    Returns:
        geometry (Tensor[R, K * K, 4]): :func:`relative_geometry` of object box l seen from subject box k.
        weights (Tensor[R, K * K]): attention_sk * attention_ol.
    """
    K = boxes.shape[2]
    item, subject, obj = relation_index.unbind(1)
    source, target = boxes[item, subject], boxes[item, obj]  # [R, K, 4]
    R = source.shape[0]
    geometry = relative_geometry(source[:, :, None], target[:, None]).reshape(R, K * K, 4)
    weights = (attention[item, subject][:, :, None] * attention[item, obj][:, None]).reshape(R, K * K)
    return geometry, weights


def expected_boxes(boxes: Tensor, attention: Tensor) -> Tensor:
    """sum_k a_k box_k / sum_k a_k: the box a phrase's attention points at on average.

    Args:
        boxes (Tensor[B, P, K, 4]): xyxy.
        attention (Tensor[B, P, K]): >= 0 (0 in empty slots).

    Returns:
        Tensor[B, P, 4]: zeros for a phrase with no attention mass.
    """
    total = attention.sum(-1, keepdim=True)
    return torch.einsum("bpk,bpkc->bpc", attention, boxes) / total.clamp(min=1e-12)


def relation_roles(relation_index: Tensor, relation_labels: Tensor, phrase_valid: Tensor) -> Tensor:
    """The typed edges of the phrase graph, as seen from the receiving phrase.

    Args:
        relation_index (Tensor[R, 3]): long (batch item, subject phrase, object phrase).
        relation_labels (Tensor[R, C_r]): multi-hot relation categories (all-zero = no kept category).
        phrase_valid (Tensor[B, P]): bool.

    Returns:
        Tensor[B, P, P, 2 C_r + 2]: for receiver i and sender j, the categories of the relations where i is the
        subject and j the object, then those where i is the object, then one flag per role (so an edge without a
        kept category still says which side it is on). Zero where no relation links i and j.
    """
    B, P = phrase_valid.shape
    C = relation_labels.shape[1]
    roles = phrase_valid.new_zeros((B, P, P, 2 * C + 2), dtype=relation_labels.dtype)
    if relation_index.numel():
        item, subject, obj = relation_index.to(phrase_valid.device).unbind(1)
        labels = relation_labels.to(phrase_valid.device)
        ones = labels.new_ones(labels.shape[0], 1)
        zeros = torch.zeros_like(labels)
        as_subject = torch.cat((labels, zeros, ones, ones * 0), 1)
        as_object = torch.cat((zeros, labels, ones * 0, ones), 1)
        roles.index_put_((item, subject, obj), as_subject, accumulate=True)
        roles.index_put_((item, obj, subject), as_object, accumulate=True)
        roles = roles.clamp(max=1)
    keep = phrase_valid[:, :, None] & phrase_valid[:, None, :]
    keep &= ~torch.eye(P, dtype=torch.bool, device=phrase_valid.device)
    return roles * keep[..., None]


class RelationalGeometryMessages(nn.Module):
    """Per-box messages from the typed relation graph (``model.vogn_geometry``; not in the paper).

    Eq. 8 adds one vector per phrase to all its K boxes, scaled by alpha^c, so two identical boxes receive the
    same context and only the phrase feature could tell them apart. Here box k of phrase i also receives, from
    each neighbour j, a message computed from the relation's categories and i's role in it and from where the
    neighbour's expected box (alpha^c-weighted mean of its top-K) lies relative to box k::

        m_ik = mean_{j in N(i)} MLP([relative_geometry(box_ik, box_j), roles_ij]);   x'_ik += m_ik

    Args:
        hidden_dim: d (the message width).
        num_relation_classes: C_r.
        inner_dim: hidden width of the MLP.
    """

    def __init__(self, hidden_dim: int, num_relation_classes: int, inner_dim: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(4 + 2 * num_relation_classes + 2, inner_dim), nn.ReLU(), nn.Linear(inner_dim, hidden_dim)
        )

    def forward(self, features: Tensor, boxes: Tensor, attention: Tensor, roles: Tensor) -> Tensor:
        """
        Args:
            features (Tensor[B, P, K, d]): box features (after the VOGN, if any).
            boxes (Tensor[B, P, K, 4]): the boxes those features were pooled from, xyxy.
            attention (Tensor[B, P, K]): stage-1 attention on them (0 in empty slots).
            roles (Tensor[B, P, P, 2 C_r + 2]): from :func:`relation_roles`.

        Returns:
            Tensor[B, P, K, d]: features plus the messages (unchanged for a phrase without relations).
        """
        B, P, K, _ = boxes.shape
        neighbour = expected_boxes(boxes, attention)  # [B, P, 4]
        geometry = relative_geometry(boxes[:, :, :, None, :], neighbour[:, None, None, :, :])  # [B, P, K, P, 4]
        edge = roles.to(geometry.dtype)[:, :, None].expand(B, P, K, P, roles.shape[-1])
        messages = self.mlp(torch.cat((geometry, edge), -1))  # [B, P, K, P, d]
        linked = (roles.sum(-1) > 0).to(messages.dtype)  # [B, P, P]
        weights = linked / linked.sum(-1, keepdim=True).clamp(min=1)
        return features + torch.einsum("bpj,bpkjd->bpkd", weights, messages)
