"""DSA's HOG prior (osessl_core/models/aux_features.py) against scikit-image's skimage.feature.hog on the same
images: equal with hard orientation binning (to skimage's float32 cell sums), and the default's orientation
interpolation shown to move votes between neighbouring bins only."""
import numpy as np
import torch
from skimage.feature import hog as skimage_hog

from osessl_core.data import load_dataset
from osessl_core.models.aux_features import hog, hog_blocks, hog_cells

CELL, BINS, BLOCK = 4, 9, 2  # our defaults


def reference(images: torch.Tensor) -> torch.Tensor:
    """skimage.feature.hog with our cell, block, bins and normalisation, one H x W x 3 image at a time."""
    return torch.stack([torch.from_numpy(skimage_hog(
        im.permute(1, 2, 0).numpy(), orientations=BINS, pixels_per_cell=(CELL, CELL), cells_per_block=(BLOCK, BLOCK),
        block_norm="L2-Hys", channel_axis=-1)) for im in images])


def random_images(n: int, seed: int) -> torch.Tensor:
    """Integer-valued float64 images in [0, 255]: gradients, squared magnitudes and channel ties are exact."""
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)).double()


def cifar_images(root: str, n: int = 8) -> torch.Tensor:
    return load_dataset("cifar10", root, "test").images[:n].double()


def test_hard_binning_equals_skimage(cifar_root):
    for x in (random_images(4, 0) / 255, cifar_images(cifar_root) / 255):
        ours, ref = hog(x, interpolate=False), reference(x)
        assert ours.shape == ref.shape == (len(x), 7 * 7 * BLOCK * BLOCK * BINS)
        assert (ours - ref).abs().max() < 1e-6  # skimage sums each cell in float32 (next test)


def skimage_cell_sums(votes: torch.Tensor) -> torch.Tensor:
    """skimage's cell_hog: `float total` += each pixel's vote (a double), the cell's pixels row-major, then
    / (cell x cell) in float32. votes: per-pixel hard votes, B x bins x H x W."""
    total = torch.zeros(votes.shape[0], votes.shape[1], votes.shape[2] // CELL, votes.shape[3] // CELL,
                        dtype=torch.float32)
    for dy in range(CELL):
        for dx in range(CELL):
            total = (total.double() + votes[:, :, dy::CELL, dx::CELL]).float()
    return (total / (CELL * CELL)).double()


def test_the_only_difference_from_skimage_is_its_float32_cell_sums(cifar_root):
    for x in (random_images(4, 1), cifar_images(cifar_root)):  # integer-valued: exact gradients in both
        ref = reference(x)
        votes = hog_cells(x, cell=1, interpolate=False)         # each pixel's vote (a 1 x 1 cell)
        assert (hog_blocks(skimage_cell_sums(votes)) - ref).abs().max() < 1e-12
        assert (hog(x, interpolate=False) - ref).abs().max() > 1e-10  # why the test above needs its tolerance


def test_default_interpolation_only_moves_votes_between_neighbouring_bins(cifar_root):
    x = cifar_images(cifar_root) / 255
    soft, hard = hog_cells(x), hog_cells(x, interpolate=False)
    assert torch.allclose(soft.sum(1), hard.sum(1), rtol=0, atol=1e-12)  # each cell's total vote is unchanged
    assert (soft - hard).abs().max() > 1e-2                               # but its split over the bins differs
    assert (hog(x) - reference(x)).abs().max() > 1e-2
    # An image that varies along its rows only: every gradient points along the rows, orientation pi/2, the centre
    # of bin 4, so there is nothing to split and the default equals skimage too.
    rows = torch.rand(4, 3, 32, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = rows.expand(-1, -1, -1, 32).contiguous()
    ours, ref = hog(x), reference(x)
    assert (ours - ref).abs().max() < 1e-6 and torch.equal(hog(x), hog(x, interpolate=False))
    assert np.count_nonzero(ref.numpy()) > 0
