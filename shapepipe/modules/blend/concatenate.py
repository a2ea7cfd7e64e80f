"""``concatenate`` and ``convert``: stacks of blends and training targets, and flux tables.

The stacks are written chunk by chunk (a .npy header, then each chunk's bytes appended), so
memory does not grow with the number of blends; each is written under a temporary name and
renamed.
"""

import contextlib
import glob
import os
import re

import numpy as np

from shapepipe.modules.blend.io import (
    BLEND_SEG_TMP,
    BLEND_TMP,
    IMG_DTYPE,
    PREFIXES,
    SEG_DTYPE,
    STAMP_SIZE,
    BlendError,
    save_npy_atomic,
)
from shapepipe.modules.blend.segmap import MASK_METHODS
from shapepipe.utils.atomic import atomic_path

METHODS = tuple(MASK_METHODS) + ("single_images",)
#: Blends read per chunk (~0.3 MB each in memory at most).
CHUNK = 64
DEFAULT_ZEROPOINT = 25.96


def count_blends(image_dir, prefix):
    """Number of blends of a split, checking that images and masks are numbered 0..n-1."""
    numbers = {}
    for kind, template in (("image", BLEND_TMP), ("mask", BLEND_SEG_TMP)):
        pattern = template.format(prefix=prefix, idx=0).replace("000000", "[0-9]" * 6)
        names = glob.glob(os.path.join(glob.escape(image_dir), pattern))
        numbers[kind] = sorted(int(re.findall(r"(\d{6})\.npy$", n)[0]) for n in names)
    n = len(numbers["mask"])
    for kind, found in numbers.items():
        if found != list(range(n)):
            missing = sorted(set(range(max(n, len(found)))) - set(found))
            what = (BLEND_TMP if kind == "image" else BLEND_SEG_TMP).format(
                prefix=prefix, idx=missing[0] if missing else len(found) - 1)
            raise BlendError(f"{os.path.join(image_dir, what)}: missing ({len(found)} {prefix} "
                             f"{kind} files for {n} {prefix} masks)")
    return n


def _load(path, shape, dtype):
    array = np.load(path, allow_pickle=False)
    if array.shape != shape or array.dtype != dtype:
        raise BlendError(f"{path}: array {array.shape} {array.dtype}, expected {shape} "
                         f"{np.dtype(dtype)}")
    return array


def _read_chunk(image_dir, prefix, start, stop, images=True, masks=True):
    size = STAMP_SIZE
    img = np.empty((stop - start, size, size, 2), IMG_DTYPE) if images else None
    seg = np.empty((stop - start, 2, size, size), SEG_DTYPE) if masks else None
    for k, idx in enumerate(range(start, stop)):
        if images:
            img[k] = _load(os.path.join(image_dir, BLEND_TMP.format(prefix=prefix, idx=idx)),
                           (size, size, 2), IMG_DTYPE)
        if masks:
            seg[k] = _load(os.path.join(image_dir, BLEND_SEG_TMP.format(prefix=prefix,
                                                                        idx=idx)),
                           (2, size, size), SEG_DTYPE)
    return img, seg


def _target_shape(method, n):
    size = STAMP_SIZE
    return {"gg_masks": ((n, 2, size, size), SEG_DTYPE),
            "ogg_masks": ((n, size, size, 3), SEG_DTYPE),
            "bogg_masks": ((n, size, size, 4), SEG_DTYPE),
            "single_images": ((n, size, size, 2), IMG_DTYPE)}[method]


def concatenate(image_dir, method, delete=False, echo=print):
    """Stack the blends of ``image_dir`` into ``<prefix>_blends.npy`` and ``<prefix>_<method>.npy``.

    Parameters
    ----------
    image_dir : str
        A ``produce`` output directory.
    method : {"gg_masks", "ogg_masks", "bogg_masks", "single_images"}
        Target encoding (see :mod:`shapepipe.modules.blend.segmap`); ``single_images`` stacks
        the two galaxy images (N, 128, 128, 2).
    delete : bool
        Remove the per-blend files of a split once both of its stacks exist.
    echo : callable
        Progress messages.

    Returns
    -------
    list of str
        The files written (existing stacks are kept, as CANDELS-blender does).
    """
    if method not in METHODS:
        raise BlendError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if not os.path.isdir(image_dir):
        raise BlendError(f"{image_dir}: not a directory")
    written = []
    for prefix in PREFIXES:
        n = count_blends(image_dir, prefix)
        blend_file = os.path.join(image_dir, f"{prefix}_blends.npy")
        target_file = os.path.join(image_dir, f"{prefix}_{method}.npy")
        todo = [f for f in (blend_file, target_file) if not os.path.exists(f)]
        if todo and n == 0 and not os.path.exists(os.path.join(image_dir,
                                                               f"{prefix}_catalogue.csv")):
            raise BlendError(f"{image_dir}: no {prefix} blends and no {prefix}_catalogue.csv "
                             "(not a produce output directory?)")
        if todo:
            _stack(image_dir, prefix, n, method, blend_file in todo, target_file in todo,
                   blend_file, target_file)
            for path in todo:
                echo(f"=> {path} created")
            written += todo
        if delete:
            for idx in range(n):
                for template in (BLEND_TMP, BLEND_SEG_TMP):
                    os.remove(os.path.join(image_dir, template.format(prefix=prefix, idx=idx)))
            echo(f"Individual {prefix} stamps deleted")
    return written


def _open_stack(stack, path, shape, dtype):
    """A file handle for a .npy of ``shape``/``dtype`` whose data is appended chunk by chunk."""
    tmp = stack.enter_context(atomic_path(path))
    handle = stack.enter_context(open(tmp, "wb"))
    np.lib.format.write_array_header_1_0(handle, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": tuple(shape)})
    return handle


def _stack(image_dir, prefix, n, method, do_blends, do_target, blend_file, target_file):
    """Write the missing stacks of one split chunk by chunk, each under a temporary name.

    Each chunk is appended to the open files (C order, after the .npy header), so memory
    holds one chunk whatever the number of blends (a memory map would keep the dirty pages
    of the whole stack resident until they are written back).
    """
    size = STAMP_SIZE
    need_img = do_blends or (do_target and method == "single_images")
    need_seg = do_target and method != "single_images"
    with contextlib.ExitStack() as stack:
        blends = target = None
        if do_blends:
            blends = _open_stack(stack, blend_file, (n, size, size), IMG_DTYPE)
        if do_target:
            target = _open_stack(stack, target_file, *_target_shape(method, n))
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            img, seg = _read_chunk(image_dir, prefix, start, stop, need_img, need_seg)
            if blends is not None:
                blends.write(img.sum(axis=-1, dtype=IMG_DTYPE).tobytes())
            if target is not None:
                out = img if method == "single_images" else MASK_METHODS[method](seg)
                target.write(np.ascontiguousarray(out).tobytes())


def convert(image_dir, zeropoint=DEFAULT_ZEROPOINT, echo=print):
    """Write ``<prefix>_flux.npy`` (N, 2) = 10^(-0.4 (mag - zeropoint)) of both galaxies.

    Parameters
    ----------
    image_dir : str
        A ``produce`` output directory (reads ``<prefix>_catalogue.csv``).
    zeropoint : float
        Magnitude zero point.
    echo : callable
        Progress messages.

    Returns
    -------
    list of str
        The files written.
    """
    from shapepipe.modules.blend.io import read_blend_catalogue

    written = []
    for prefix in PREFIXES:
        path = os.path.join(image_dir, f"{prefix}_catalogue.csv")
        mags = read_blend_catalogue(path, ("g1_mag", "g2_mag"))
        flux = 10.0 ** (-0.4 * (np.stack([mags["g1_mag"], mags["g2_mag"]], axis=-1)
                                - zeropoint))
        output = os.path.join(image_dir, f"{prefix}_flux.npy")
        save_npy_atomic(flux.reshape(-1, 2), output)
        echo(f"=> {output} created")
        written.append(output)
    return written
