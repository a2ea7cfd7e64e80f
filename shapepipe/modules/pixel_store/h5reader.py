"""The cached read handle shared by the HDF5 stores."""

import h5py


class H5Reader:
    """Mixin: ``data`` opens ``self.h5file`` read-only once; ``close`` closes it."""

    @property
    def data(self):
        """An open read handle of the file (cached; :meth:`close` closes it)."""
        handle = getattr(self, "_read_handle", None)
        if handle is None or not handle.id.valid:
            handle = h5py.File(self.h5file, "r")
            self._read_handle = handle
        return handle

    def close(self):
        """Close the read handle, if open."""
        handle = getattr(self, "_read_handle", None)
        if handle is not None and handle.id.valid:
            handle.close()
        self._read_handle = None
