import pytest
import torch

from radmm_hpc.models.fcresnet import FCResNet, forward, init_weights, layer_shapes, split_layers


@pytest.mark.parametrize("n", [1, 2, 5, 7, 33])
def test_split_layers_balanced_for_every_p(n):
    for p in range(1, n + 1):
        parts = split_layers(n, p)
        assert parts[0][0] == 1 and parts[-1][1] == n + 1
        assert all(parts[i][1] == parts[i + 1][0] for i in range(p - 1))
        sizes = [b - a for a, b in parts]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        split_layers(n, n + 1)


def test_forward_matches_definition():
    g = torch.Generator().manual_seed(0)
    W = init_weights(3, 5, 4, 2, True, 0.5, g)
    assert [tuple(w.shape) for w in W] == layer_shapes(3, 5, 4, 2, True) == [(5, 4), (5, 5), (5, 5), (5, 5), (2, 5)]
    X = torch.randn(7, 3, dtype=torch.float64, generator=g)
    V = torch.relu(torch.cat([X, torch.ones(7, 1, dtype=torch.float64)], 1) @ W[0].T)
    for w in W[1:-1]:
        V = V + torch.relu(V @ w.T)
    expected = V @ W[-1].T
    torch.testing.assert_close(forward(W, X), expected)
    torch.testing.assert_close(FCResNet(W)(X), expected)


def test_init_is_seeded():
    a = init_weights(3, 5, 4, 2, generator=torch.Generator().manual_seed(1))
    b = init_weights(3, 5, 4, 2, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
