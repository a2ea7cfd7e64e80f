"""The catalogue parameters this implementation supports, with SExtractor's formats.

Each entry: FITS type code of one element, unit, display format and description, as in
the FITS_LDAC catalogues written by SExtractor 2.25 (measured on the Debian binary).
"""

# name: (type code, unit, TDISP, description)
COLUMNS = {
    "NUMBER": ("J", "", "I10", "Running object number"),
    "X_IMAGE": ("E", "pixel", "F11.4", "Object position along x"),
    "Y_IMAGE": ("E", "pixel", "F11.4", "Object position along y"),
    "XWIN_IMAGE": ("D", "pixel", "F11.4", "Windowed position estimate along x"),
    "YWIN_IMAGE": ("D", "pixel", "F11.4", "Windowed position estimate along y"),
    "X_WORLD": ("D", "deg", "E18.10", "Barycenter position along world x axis"),
    "Y_WORLD": ("D", "deg", "E18.10", "Barycenter position along world y axis"),
    "XWIN_WORLD": ("D", "deg", "E18.10", "Windowed position along world x axis"),
    "YWIN_WORLD": ("D", "deg", "E18.10", "Windowed position along world y axis"),
    "ALPHA_J2000": ("D", "deg", "F11.7", "Right ascension of barycenter (J2000)"),
    "DELTA_J2000": ("D", "deg", "F11.7", "Declination of barycenter (J2000)"),
    "ALPHAWIN_J2000": ("D", "deg", "F11.7", "Windowed right ascension (J2000)"),
    "DELTAWIN_J2000": ("D", "deg", "F11.7", "windowed declination (J2000)"),
    "X2_IMAGE": ("D", "pixel**2", "E18.10", "Variance along x"),
    "Y2_IMAGE": ("D", "pixel**2", "E18.10", "Variance along y"),
    "XY_IMAGE": ("D", "pixel**2", "E18.10", "Covariance between x and y"),
    "CXX_IMAGE": ("E", "pixel**(-2)", "E15.7", "Cxx object ellipse parameter"),
    "CYY_IMAGE": ("E", "pixel**(-2)", "E15.7", "Cyy object ellipse parameter"),
    "CXY_IMAGE": ("E", "pixel**(-2)", "E15.7", "Cxy object ellipse parameter"),
    "A_IMAGE": ("E", "pixel", "F9.3", "Profile RMS along major axis"),
    "B_IMAGE": ("E", "pixel", "F9.3", "Profile RMS along minor axis"),
    "THETA_IMAGE": ("E", "deg", "F6.2", "Position angle (CCW/x)"),
    "ERRX2_IMAGE": ("D", "pixel**2", "E18.10", "Variance of position along x"),
    "ERRY2_IMAGE": ("D", "pixel**2", "E18.10", "Variance of position along y"),
    "ERRXY_IMAGE": ("D", "pixel**2", "E18.10", "Covariance of position between x and y"),
    "ERRA_IMAGE": ("E", "pixel", "F9.5", "RMS position error along major axis"),
    "ERRB_IMAGE": ("E", "pixel", "F9.5", "RMS position error along minor axis"),
    "ERRTHETA_IMAGE": ("E", "deg", "F6.2", "Error ellipse position angle (CCW/x)"),
    "ELONGATION": ("E", "", "F8.3", "A_IMAGE/B_IMAGE"),
    "ELLIPTICITY": ("E", "", "F8.3", "1 - B_IMAGE/A_IMAGE"),
    "FLUX_AUTO": ("E", "count", "G12.7", "Flux within a Kron-like elliptical aperture"),
    "FLUXERR_AUTO": ("E", "count", "G12.7", "RMS error for AUTO flux"),
    "MAG_AUTO": ("E", "mag", "F8.4", "Kron-like elliptical aperture magnitude"),
    "MAGERR_AUTO": ("E", "mag", "F8.4", "RMS error for AUTO magnitude"),
    "FLUX_APER": ("E", "count", "G12.7", "Flux vector within fixed circular aperture(s)"),
    "FLUXERR_APER": ("E", "count", "G12.7", "RMS error vector for aperture flux(es)"),
    "MAG_APER": ("E", "mag", "F8.4", "Fixed aperture magnitude vector"),
    "MAGERR_APER": ("E", "mag", "F8.4", "RMS error vector for fixed aperture mag."),
    "FLUX_ISO": ("E", "count", "G12.7", "Isophotal flux"),
    "FLUXERR_ISO": ("E", "count", "G12.7", "RMS error for isophotal flux"),
    "MAG_ISO": ("E", "mag", "F8.4", "Isophotal magnitude"),
    "MAGERR_ISO": ("E", "mag", "F8.4", "RMS error for isophotal magnitude"),
    "FLUX_WIN": ("E", "count", "G12.7", "Gaussian-weighted flux"),
    "FLUXERR_WIN": ("E", "count", "G12.7", "RMS error for WIN flux"),
    "MAG_WIN": ("E", "mag", "F8.4", "Gaussian-weighted magnitude"),
    "MAGERR_WIN": ("E", "mag", "F8.4", "RMS error for MAG_WIN"),
    "SNR_WIN": ("E", "", "G10.4", "Gaussian-weighted SNR"),
    "FLUX_MAX": ("E", "count", "G12.7", "Peak flux above background"),
    "XPEAK_IMAGE": ("J", "pixel", "I10", "x-coordinate of the brightest pixel"),
    "YPEAK_IMAGE": ("J", "pixel", "I10", "y-coordinate of the brightest pixel"),
    "FLUX_RADIUS": ("E", "pixel", "F10.3", "Fraction-of-light radii"),
    "FWHM_IMAGE": ("E", "pixel", "F8.2", "FWHM assuming a gaussian core"),
    "FWHM_WORLD": ("E", "deg", "G12.7", "FWHM assuming a gaussian core"),
    "KRON_RADIUS": ("E", "", "F5.2", "Kron apertures in units of A or B"),
    "FLAGS": ("I", "", "I3", "Extraction flags"),
    "IMAFLAGS_ISO": ("J", "", "I9", "FLAG-image flags OR'ed over the iso. profile"),
    "NIMAFLAGS_ISO": ("J", "", "I9", "Number of flagged pixels entering IMAFLAGS_ISO"),
    "BACKGROUND": ("E", "count", "G12.7", "Background at centroid position"),
    "THRESHOLD": ("E", "count", "G12.7", "Detection threshold above background"),
    "ISOAREA_IMAGE": ("J", "pixel**2", "I9", "Isophotal area above Analysis threshold"),
    "ISOAREAF_IMAGE": ("J", "pixel**2", "I9", "Isophotal area (filtered) above Detection "
                       "threshold"),
    "VIGNET": ("E", "count", "G12.7", "Pixel data around detection"),
    "CLASS_STAR": ("E", "", "F6.3", "S/G classifier output"),
}

# Parameters that are vectors, and the configuration list that sets their maximum length.
VECTOR_PARAMS = {
    "FLUX_APER": "PHOT_APERTURES",
    "FLUXERR_APER": "PHOT_APERTURES",
    "MAG_APER": "PHOT_APERTURES",
    "MAGERR_APER": "PHOT_APERTURES",
    "FLUX_RADIUS": "PHOT_FLUXFRAC",
}

NUMPY_TYPES = {"J": "i4", "I": "i2", "E": "f4", "D": "f8"}
