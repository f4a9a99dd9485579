import math

import pytest
import torch

from relground.model.vogn import (
    RelationalGeometryMessages,
    VisualObjectGraph,
    expected_boxes,
    relation_adjacency,
    relation_roles,
    relative_geometry,
)


def _inputs(B=1, P=4, K=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, P, K, d, generator=g, dtype=torch.float64)
    attention = torch.softmax(torch.randn(B, P, K, generator=g, dtype=torch.float64), -1)
    return features, attention


def test_adjacency_is_symmetric_without_self_loops_or_padding():
    relations = torch.tensor([[0, 0, 1], [0, 2, 2], [1, 1, 0], [1, 0, 2]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    adjacency = relation_adjacency(relations, valid)
    expected = torch.zeros(2, 3, 3, dtype=torch.bool)
    expected[0, 0, 1] = expected[0, 1, 0] = True
    expected[1, 0, 1] = expected[1, 1, 0] = True  # (1, 0, 2) touches padding phrase 2: dropped
    assert torch.equal(adjacency, expected)
    assert not relation_adjacency(torch.zeros(0, 3, dtype=torch.long), valid).any()


@pytest.mark.parametrize("variant", ["authors", "paper"])
@pytest.mark.parametrize("weights", ["attention", "uniform"])
def test_messages_travel_only_along_edges(variant, weights):
    graph = VisualObjectGraph(8, key_dim=4, variant=variant, weights=weights).double()
    features, attention = _inputs()
    relations = torch.tensor([[0, 0, 1], [0, 1, 2]])  # chain 0 - 1 - 2, node 3 isolated
    adjacency = relation_adjacency(relations, torch.ones(1, 4, dtype=torch.bool))
    out = graph(features, attention, adjacency)
    changed = features.clone()
    changed[0, 3] += 5.0  # the isolated node
    out_changed = graph(changed, attention, adjacency)
    torch.testing.assert_close(out_changed[0, :3], out[0, :3])
    changed = features.clone()
    changed[0, 0] += 5.0  # node 0 talks to node 1 only
    out_changed = graph(changed, attention, adjacency)
    assert not torch.allclose(out_changed[0, 1], out[0, 1])
    torch.testing.assert_close(out_changed[0, 3], out[0, 3])
    if variant == "authors":
        torch.testing.assert_close(out_changed[0, 2], out[0, 2])  # two hops away: one round only
        torch.testing.assert_close(out[0, 3], features[0, 3])  # no relation, no message


def test_authors_variant_matches_a_float64_loop():
    d, key_dim = 8, 4
    graph = VisualObjectGraph(d, key_dim=key_dim, variant="authors").double()
    features, attention = _inputs()
    relations = torch.tensor([[0, 0, 1], [0, 1, 2], [0, 3, 1]])
    adjacency = relation_adjacency(relations, torch.ones(1, 4, dtype=torch.bool))
    out = graph(features, attention, adjacency)
    nodes = [sum(attention[0, i, k] * features[0, i, k] for k in range(3)) for i in range(4)]
    for i in range(4):
        neighbours = [j for j in range(4) if adjacency[0, i, j]]
        if neighbours:
            gates = [
                max(0.0, (graph.key(nodes[i]) @ graph.key(nodes[j])).item() / math.sqrt(key_dim)) for j in neighbours
            ]
            w = [math.exp(gv) / sum(math.exp(x) for x in gates) for gv in gates]
            message = torch.relu(graph.message(sum(wj * nodes[j] for wj, j in zip(w, neighbours))))
        else:
            message = torch.zeros(d, dtype=torch.float64)
        for k in range(3):
            torch.testing.assert_close(out[0, i, k], features[0, i, k] + attention[0, i, k] * message)


def test_paper_variant_matches_eq_6_to_8_and_uniform_weights_average_neighbours():
    d = 8
    features, attention = _inputs()
    adjacency = relation_adjacency(torch.tensor([[0, 0, 1], [0, 0, 2]]), torch.ones(1, 4, dtype=torch.bool))
    nodes = [sum(attention[0, i, k] * features[0, i, k] for k in range(3)) for i in range(4)]
    for weights in ("attention", "uniform"):
        graph = VisualObjectGraph(d, variant="paper", weights=weights).double()
        out = graph(features, attention, adjacency)
        f = [graph.message(z) for z in nodes]
        # node 0 has neighbours 1 and 2
        if weights == "uniform":
            w = [0.5, 0.5]
        else:
            a = [(f[0] @ f[j]).item() / math.sqrt(d) for j in (1, 2)]
            w = [math.exp(x) / sum(math.exp(y) for y in a) for x in a]
        z0 = nodes[0] + w[0] * f[1] + w[1] * f[2]
        torch.testing.assert_close(out[0, 0, 1], features[0, 0, 1] + attention[0, 0, 1] * z0)
        torch.testing.assert_close(out[0, 3, 0], features[0, 3, 0] + attention[0, 3, 0] * nodes[3])  # isolated: z' = z


def test_bad_variant_names_the_field():
    with pytest.raises(ValueError, match="vogn_variant"):
        VisualObjectGraph(8, variant="gat")
    with pytest.raises(ValueError, match="vogn_weights"):
        VisualObjectGraph(8, weights="mean")


# --- typed geometric messages (model.vogn_geometry) -------------------------------------------------------------


def _relative_geometry_loop(source, target):
    """Float64 Python reference of relative_geometry for one pair of boxes."""
    sx1, sy1, sx2, sy2 = (float(v) for v in source)
    tx1, ty1, tx2, ty2 = (float(v) for v in target)
    ws, hs = max(sx2 - sx1, 1.0), max(sy2 - sy1, 1.0)
    wt, ht = max(tx2 - tx1, 1.0), max(ty2 - ty1, 1.0)
    return [
        ((tx1 + tx2) / 2 - (sx1 + sx2) / 2) / ws,
        ((ty1 + ty2) / 2 - (sy1 + sy2) / 2) / hs,
        math.log(wt / ws),
        math.log(ht / hs),
    ]


def test_relative_geometry_matches_a_float64_loop():
    g = torch.Generator().manual_seed(3)
    corners = torch.rand(20, 2, 2, generator=g, dtype=torch.float64) * 100
    boxes = torch.cat((corners.min(1).values, corners.max(1).values), 1)  # [20, 4] xyxy
    boxes[0, 2] = boxes[0, 0]  # a degenerate box: width counts as 1
    source, target = boxes[:10], boxes[10:]
    expected = torch.tensor([_relative_geometry_loop(s, t) for s, t in zip(source, target)], dtype=torch.float64)
    torch.testing.assert_close(relative_geometry(source, target), expected)
    # Right of and below the source: positive offsets; the same box: all zero.
    assert (relative_geometry(torch.tensor([0.0, 0, 10, 10]), torch.tensor([20.0, 30, 30, 40]))[:2] > 0).all()
    assert relative_geometry(boxes[3], boxes[3]).abs().max() == 0


def test_expected_boxes_is_the_attention_weighted_mean():
    boxes = torch.tensor([[[[0.0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 0, 0]]]])  # [1, 1, 3, 4], slot 2 empty
    attention = torch.tensor([[[0.3, 0.1, 0.0]]])  # not normalised
    expected = (0.3 * boxes[0, 0, 0] + 0.1 * boxes[0, 0, 1]) / 0.4
    torch.testing.assert_close(expected_boxes(boxes, attention)[0, 0], expected)
    assert expected_boxes(boxes, torch.zeros(1, 1, 3)).abs().max() == 0  # no mass: zeros, not NaN


def test_relation_roles_types_each_side_of_an_edge():
    relations = torch.tensor([[0, 0, 1], [0, 2, 1], [0, 0, 3]])  # 0 -r0-> 1, 2 -r1-> 1, 0 -> 3 (padding)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    valid = torch.tensor([[True, True, True, False]])
    roles = relation_roles(relations, labels, valid)
    assert roles.shape == (1, 4, 4, 6)
    torch.testing.assert_close(roles[0, 0, 1], torch.tensor([1.0, 0, 0, 0, 1, 0]))  # 0 is the subject of r0
    torch.testing.assert_close(roles[0, 1, 0], torch.tensor([0.0, 0, 1, 0, 0, 1]))  # 1 is its object
    torch.testing.assert_close(roles[0, 1, 2], torch.tensor([0.0, 0, 0, 1, 0, 1]))
    assert roles[0, 0, 2].abs().max() == 0 and roles[0, 3].abs().max() == 0 and roles[0, :, 3].abs().max() == 0


def test_geometric_messages_tell_identical_boxes_apart_by_place():
    torch.manual_seed(0)
    messages = RelationalGeometryMessages(8, num_relation_classes=2, inner_dim=16).double()
    B, P, K, d = 1, 3, 2, 8
    features = torch.randn(1, 1, 1, d, dtype=torch.float64).expand(B, P, K, d).clone()  # every box looks alike
    boxes = torch.tensor(
        [[[[0.0, 0, 10, 10], [60, 0, 70, 10]], [[30, 0, 40, 10], [30, 0, 40, 10]], [[0, 50, 10, 60]] * 2]],
        dtype=torch.float64,
    )  # phrase 0: twins left / right of phrase 1; phrase 2: unrelated
    attention = torch.full((B, P, K), 0.5, dtype=torch.float64)
    roles = relation_roles(torch.tensor([[0, 0, 1]]), torch.tensor([[1.0, 0.0]]), torch.ones(B, P, dtype=torch.bool))
    out = messages(features, boxes, attention, roles)
    assert (out[0, 0, 0] - out[0, 0, 1]).abs().max() > 1e-6  # same look, different side: different features
    torch.testing.assert_close(out[0, 2], features[0, 2])  # no relation, no message
    # The message depends on the relation's category, not only on the geometry.
    other = relation_roles(torch.tensor([[0, 0, 1]]), torch.tensor([[0.0, 1.0]]), torch.ones(B, P, dtype=torch.bool))
    assert (messages(features, boxes, attention, other)[0, 0] - out[0, 0]).abs().max() > 1e-6
