import pytest
import torch

from lddmm_nets import (CauchyKernel, FeatureMapKernel, GaussianKernel, LaplaceKernel, MaternKernel, SumKernel,
                        backends)



def radial_kernels():
    """One instance of every radial kernel family (with a multi-scale sum)."""
    return [
        GaussianKernel(sigma=0.7),
        LaplaceKernel(sigma=0.8),
        MaternKernel(nu=1.5, sigma=0.9),
        MaternKernel(nu=2.5, sigma=0.6),
        CauchyKernel(sigma=0.5),
        SumKernel([GaussianKernel(sigma=0.3), MaternKernel(nu=2.5, sigma=1.2)], weights=[2.0, 1.0]),
    ]


def all_kernels():
    return radial_kernels() + [FeatureMapKernel("tanh", c=1.0)]


requires_keops = pytest.mark.skipif(not backends.keops_available(), reason="KeOps cannot compile on this machine")


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test: on the 2 shared cores of CI, torch's thread pool costs more than it saves on
    these small problems (several times slower when the cores are busy)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Run a test on every device: the CPU always, CUDA when this machine has it (skipped otherwise).

    A test that takes this fixture must put every tensor it makes on ``device`` and check that results stay there:
    that is how the engine's "device follows the inputs" contract is tested on a GPU machine.
    """
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    return torch.device(request.param)
