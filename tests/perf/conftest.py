"""Fixtures of the performance tests: tiny models with non-trivial padding tokens."""
import pytest
import torch


def perturb_zero_init(model, seed=1):
    """Give the zero-initialised parameters (padding tokens/guidance) random values.

    With zeros every padding token is the same trivial vector; random values make the
    closed-form padding and the padded reference differ if the closed form were wrong.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "padding" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(name="perturb_zero_init", scope="session")
def perturb_zero_init_fixture():
    return perturb_zero_init
