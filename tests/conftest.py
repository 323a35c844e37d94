import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OSESSL_SHARED", REPO.parent / "shared"))
CIFAR_ARCHIVE = SHARED / "data" / "cifar10-jpg.tar.gz"


@pytest.fixture(scope="session")
def cifar_root() -> str:
    """The real CIFAR-10 archive from ../shared (CI has it beside the clone). Missing data is an error, not a skip."""
    if not CIFAR_ARCHIVE.exists():
        pytest.fail(f"real CIFAR-10 archive not found at {CIFAR_ARCHIVE}; set OSESSL_SHARED to the shared/ folder")
    return str(CIFAR_ARCHIVE.parent)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny tensors: on a small, busy CPU box more threads only add
    contention (10x+ slowdowns); restored afterwards. Use with pytestmark = pytest.mark.usefixtures(...)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
