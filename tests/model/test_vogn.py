import math

import pytest
import torch

from relground.model.vogn import VisualObjectGraph, relation_adjacency


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
