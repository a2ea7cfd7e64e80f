"""Shared science helpers: atomic writes, FITS/LDAC I/O, random numbers, pixel conventions."""
