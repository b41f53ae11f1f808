"""Default layer lists (`lede_env.engine.limits`)."""

from lede_env.engine.limits import default_exit_layers


def test_default_exit_layers_start_at_the_two_shallowest_then_every_second():
    assert default_exit_layers(30) == (1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28)   # SmolLM2
    assert default_exit_layers(32) == (1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
    assert default_exit_layers(6) == (1, 2, 4)
    assert default_exit_layers(3) == (1, 2)
    assert default_exit_layers(2) == (1,)
    for n in range(2, 80):
        layers = default_exit_layers(n)
        assert list(layers) == sorted(set(layers)) and 1 <= layers[0] and layers[-1] <= n - 1
