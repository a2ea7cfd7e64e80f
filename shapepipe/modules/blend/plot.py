"""A figure of a few blends: the blended image, and each galaxy's mask outlined on it."""

import os

import numpy as np

from shapepipe.modules.blend.concatenate import count_blends
from shapepipe.modules.blend.io import BLEND_SEG_TMP, BLEND_TMP, BlendError


def _asinh_limits(image):
    """Display stretch: arcsinh of the image scaled by its noise (robust), for faint wings."""
    med = np.median(image)
    mad = 1.4826 * np.median(np.abs(image - med)) or 1.0
    return np.arcsinh((image - med) / mad)


def load_blends(image_dir, prefix, n_show):
    """The first ``n_show`` blends of a split: per-blend files, or the concatenated stacks.

    Returns
    -------
    img : numpy.ndarray
        (K, N, N, 2) float32 galaxy images (or (K, N, N, 1) blends when only the stacks exist).
    seg : numpy.ndarray or None
        (K, 2, N, N) masks, or None if no mask stack can give them.
    """
    n = count_blends(image_dir, prefix)
    if n:
        k = min(n, n_show)
        img = np.stack([np.load(os.path.join(image_dir, BLEND_TMP.format(prefix=prefix, idx=i)))
                        for i in range(k)])
        seg = np.stack([np.load(os.path.join(image_dir, BLEND_SEG_TMP.format(prefix=prefix,
                                                                             idx=i)))
                        for i in range(k)])
        return img, seg
    stack = os.path.join(image_dir, f"{prefix}_blends.npy")
    if not os.path.exists(stack):
        raise BlendError(f"{image_dir}: no {prefix} blends (neither per-blend files nor "
                         f"{prefix}_blends.npy)")
    blends = np.load(stack, mmap_mode="r")[:n_show]
    seg = None
    for method in ("gg_masks", "ogg_masks", "bogg_masks"):
        path = os.path.join(image_dir, f"{prefix}_{method}.npy")
        if os.path.exists(path):
            masks = np.asarray(np.load(path, mmap_mode="r")[:n_show])
            seg = masks if method == "gg_masks" else np.moveaxis(
                masks[..., 1:3] if method == "ogg_masks" else masks[..., 2:4] | masks[..., 1:2],
                -1, 1)
            break
    return np.asarray(blends)[..., None], seg


def plot_blends(image_dir, output, n_show=4, prefix="train"):
    """Save a figure: per blend, the blend (sum of the channels) and the two masks' outlines.

    Parameters
    ----------
    image_dir : str
        A ``produce`` output directory (before or after ``concatenate``).
    output : str
        Image file (format from its extension).
    n_show : int
        Blends shown.
    prefix : {"train", "test"}
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shapepipe.utils.atomic import atomic_path

    img, seg = load_blends(image_dir, prefix, n_show)
    k = img.shape[0]
    if k == 0:
        raise BlendError(f"{image_dir}: no {prefix} blends to plot")
    singles = img.shape[-1] == 2
    cols = (3 if singles else 1) + (seg is not None)
    fig, axes = plt.subplots(k, cols, figsize=(2.6 * cols, 2.7 * k + 0.4), squeeze=False)
    colors = ((1.0, 0.55, 0.0), (0.0, 0.75, 1.0))  # galaxy 1 orange, galaxy 2 cyan
    for i in range(k):
        panels = [("blend", img[i].sum(axis=-1))]
        if singles:
            panels += [("galaxy 1", img[i, ..., 0]), ("galaxy 2", img[i, ..., 1])]
        for j, (title, data) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(_asinh_limits(data), origin="lower", cmap="gray")
            if seg is not None:
                for c in (0, 1):
                    if j in (0, c + 1) and seg[i, c].any():
                        ax.contour(seg[i, c], levels=[0.5], colors=[colors[c]],
                                   linewidths=0.8)
            ax.set_title(f"{prefix} {i}: {title}", fontsize=8)
        if seg is not None:
            rgb = np.zeros(seg.shape[2:] + (3,))
            for c in (0, 1):
                rgb += seg[i, c].astype(bool)[..., None] * np.array(colors[c])
            axes[i, -1].imshow(np.clip(rgb, 0, 1), origin="lower")
            axes[i, -1].set_title(f"{prefix} {i}: masks (overlap white)", fontsize=8)
        for ax in axes[i]:
            ax.set_axis_off()
    fig.suptitle("galaxy 1 orange, galaxy 2 cyan", fontsize=9)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=80, format=os.path.splitext(output)[1].lstrip(".") or "png")
    plt.close(fig)
    return output
