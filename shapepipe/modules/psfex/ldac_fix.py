"""Make FITS_LDAC catalogues written by astropy readable by PSFEx.

PSFEx (3.21) is strict about the image header stored in ``LDAC_IMHEAD``:

- it finds the end of the header by comparing each 80-byte card with ``"END     "``;
  astropy pads character columns with NUL bytes instead of blanks, so PSFEx reads past the
  header and crashes (segmentation fault);
- the header must start with ``SIMPLE`` ("Corrupted FITS header" otherwise);
- it needs SExtractor's ``SEXBKDEV`` (background rms) and ``SEXGAIN`` keywords.

:func:`prepare_for_psfex` writes a copy that satisfies all three, so that catalogues from
this project's ``sextractor`` (or any astropy writer) can be given to the real PSFEx.
"""

import numpy as np
from astropy.io import fits

from shapepipe.utils.ldac import CARD_COLUMN, read_imhead

_REQUIRED = ("SEXBKGND", "SEXBKDEV", "SEXGAIN", "SEXSATLV")


def needs_preparation(path):
    """Whether :func:`prepare_for_psfex` would change the catalogue."""
    with fits.open(path, memmap=False) as hdul:
        for i, hdu in enumerate(hdul):
            if hdu.name != "LDAC_IMHEAD":
                continue
            header = read_imhead(hdu)
            first = next(iter(header.keys()), "")
            missing = [k for k in _REQUIRED if k not in header]
            if first != "SIMPLE" or missing:
                return True
            info = hdul.fileinfo(i)
            with open(path, "rb") as handle:
                handle.seek(info["datLoc"])
                if b"\x00" in handle.read(hdu.header["NAXIS1"] * hdu.header["NAXIS2"]):
                    return True
    return False


def _imhead_for_psfex(header, bkdev):
    fixed = fits.Header()
    fixed["SIMPLE"] = True
    fixed["BITPIX"] = header.get("BITPIX", -32)
    for card in header.cards:
        if card.keyword not in ("SIMPLE", "BITPIX", "END", ""):
            fixed.append(card)
    # SExtractor's keywords PSFEx reads; 0 gain means "no Poisson term", as SExtractor writes
    # for GAIN 0.
    defaults = {"SEXBKGND": (0.0, "Median background level"),
                "SEXBKDEV": (float(bkdev), "Background RMS (estimated from the VIGNETs)"),
                "SEXGAIN": (float(header.get("GAIN", 0.0)), "Gain used (e-/ADU)"),
                "SEXSATLV": (float(header.get("SATURATE", 1e30)), "Saturation level (ADU)")}
    for key, value in defaults.items():
        if key not in fixed:
            fixed[key] = value
    text = fixed.tostring(endcard=True, padding=False)
    n_cards = len(text) // 80
    cards = np.array([text[i : i + 80].encode("ascii") for i in range(0, len(text), 80)], "S80")
    column = fits.Column(name=CARD_COLUMN, format=f"{n_cards * 80}A", dim=f"(80, {n_cards})",
                         array=cards[None])
    hdu = fits.BinTableHDU.from_columns([column])
    hdu.header["EXTNAME"] = "LDAC_IMHEAD"
    return hdu


def vignet_background_rms(vignets):
    """Robust rms of the outer ring of a stack of VIGNETs (masked pixels ignored)."""
    vignets = np.asarray(vignets, dtype=float)
    if vignets.ndim != 3 or vignets.shape[0] == 0:
        return 1.0
    border = np.concatenate([vignets[:, :2].reshape(len(vignets), -1),
                             vignets[:, -2:].reshape(len(vignets), -1),
                             vignets[:, :, :2].reshape(len(vignets), -1),
                             vignets[:, :, -2:].reshape(len(vignets), -1)], axis=1)
    values = border[border > -1e29]
    if values.size < 10:
        return 1.0
    mad = np.median(np.abs(values - np.median(values)))
    return float(1.4826 * mad) or 1.0


def prepare_for_psfex(src, dst):
    """Write a copy of a FITS_LDAC catalogue that PSFEx can read.

    Parameters
    ----------
    src : str
        Input catalogue.
    dst : str
        Output catalogue (not ``src``).
    """
    with fits.open(src, memmap=False) as hdul:
        out = [fits.PrimaryHDU(header=hdul[0].header)]
        hdus = list(hdul[1:])
        for i, hdu in enumerate(hdus):
            if hdu.name == "LDAC_IMHEAD":
                objects = hdus[i + 1] if i + 1 < len(hdus) else None
                vignets = None
                if objects is not None and "VIGNET" in objects.columns.names:
                    vignets = objects.data["VIGNET"]
                out.append(_imhead_for_psfex(read_imhead(hdu), vignet_background_rms(vignets)))
            else:
                out.append(hdu.copy())
        fits.HDUList(out).writeto(dst, overwrite=True)
    _blank_pad(dst)


def _blank_pad(path):
    with fits.open(path, memmap=False) as hdul:
        ranges = [(hdul.fileinfo(i)["datLoc"], h.header["NAXIS1"] * h.header["NAXIS2"])
                  for i, h in enumerate(hdul) if h.name == "LDAC_IMHEAD"]
    with open(path, "r+b") as handle:
        for start, size in ranges:
            handle.seek(start)
            block = handle.read(size)
            handle.seek(start)
            handle.write(block.replace(b"\x00", b" "))
