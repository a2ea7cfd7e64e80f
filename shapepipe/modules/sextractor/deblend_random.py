"""SExtractor's random numbers for sep's deblending: sep's ``rand_r`` routed to glibc ``rand``.

Why (measured on issue 18, see bench/RESULTS.md):

1. When deblending splits a detection, the pixels between the sub-objects' cores are handed
   out at random, in proportion to each candidate's Gaussian model: SExtractor 2.25 does it
   in ``deblend_gatherup`` (src/refine.c) with glibc ``rand()``.
2. SExtractor never calls ``srand``, so the sequence is glibc's ``srand(1)`` one, drawn
   pixel by pixel, blend after blend, for a whole process (one ``source-extractor`` run;
   the extensions of a multi-extension file continue the same sequence).
3. sep 1.4.1 makes the same hand-out with ``rand_r(&randseed)`` and sets ``randseed = 1``
   at each ``sep_extract`` call. glibc's ``rand_r`` is a different generator (seed 1 gives
   476707713, 1186278907, ... where ``rand()`` gives 1804289383, 846930886, ...).
4. So the footprints of blended objects differ from SExtractor's, and with them their
   windowed positions, flags and fluxes: on astropy's M13 image XWIN agreed within 0.1 px
   for 95.1% of the objects; with ``rand()`` in sep's place, 99.3%.
5. sep's compiled module calls ``rand_r`` through its procedure linkage table, i.e. through
   one pointer in its global offset table (GOT) that the dynamic linker fills in. Writing
   the address of glibc's ``rand`` there makes sep's deblending draw from SExtractor's
   sequence. ``rand(void)`` called with one extra pointer argument is harmless under the
   x86-64 and AArch64 calling conventions (the argument sits in a register ``rand`` never
   reads). No compiler, no rebuilt sep, no ``LD_PRELOAD`` (pipeline workers are forked, and
   sep is imported by the job).

:func:`select` does it once per process (idempotent) and can undo it (``SEP`` mode);
:func:`reset` is SExtractor's start state (``srand(1)``), called before each image. Where
the patch is impossible (not Linux/glibc, not a little-endian ELF64 x86-64/AArch64 module,
``rand_r`` not imported by sep, the slot not where the ELF headers say) nothing is written
and sep's own generator is used, with a message saying what differs. Nothing here raises.
"""

import ctypes
import os
import platform
import struct
import threading
import warnings

SEXTRACTOR = "SEXTRACTOR"
SEP = "SEP"
MODES = (SEXTRACTOR, SEP)

#: What differs when sep's own generator is used (the fallback message starts with the why).
CONSEQUENCE = ("pixels shared by blended objects are handed out by sep's own random "
               "generator, not SExtractor's glibc rand() sequence, so the footprints, windowed "
               "positions, flags and fluxes of blended objects can differ from SExtractor's")

# ELF constants (System V gABI; x86-64 and AArch64 psABIs).
_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_PLTRELSZ, _DT_STRTAB, _DT_SYMTAB = 0, 2, 5, 6
_DT_RELA, _DT_RELASZ, _DT_RELAENT, _DT_SYMENT, _DT_PLTREL, _DT_JMPREL = 7, 8, 9, 11, 20, 23
_EM_X86_64, _EM_AARCH64 = 62, 183
#: Relocation types that fill a GOT slot with a symbol's address: (GLOB_DAT, JUMP_SLOT).
_SLOT_TYPES = {_EM_X86_64: (6, 7), _EM_AARCH64: (1025, 1026)}
_PROT = {"r": 1, "w": 2, "x": 4}


class DeblendRandomWarning(UserWarning):
    """sep's own generator is used: blends can differ from SExtractor's."""


class _State:
    lock = threading.Lock()
    slots = None       # [(address, original value)] once patched
    rand = None        # address of glibc rand
    failure = None     # why the patch is impossible in this process (then not retried)
    warned = False


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.srand.argtypes = [ctypes.c_uint]
    libc.srand.restype = None
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mprotect.restype = ctypes.c_int
    return libc


def _vaddr_to_offset(loads, vaddr):
    for _, offset, start, filesz, _ in loads:
        if start <= vaddr < start + filesz:
            return vaddr - start + offset
    raise ValueError(f"address {vaddr:#x} is in no loaded segment of the file")


def got_slots(path, symbol=b"rand_r"):
    """GOT slots of an ELF64 little-endian shared object that receive ``symbol``'s address.

    Parameters
    ----------
    path : str
        The shared object (e.g. ``sep.__file__``).
    symbol : bytes
        Name of the imported function.

    Returns
    -------
    list of int
        Virtual addresses (relative to the load base) of the slots filled by a JUMP_SLOT or
        GLOB_DAT relocation of ``symbol`` (empty: not imported that way).

    Raises
    ------
    ValueError
        Not an ELF64 little-endian x86-64/AArch64 file, or inconsistent headers.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a little-endian ELF64 file")
    machine, = struct.unpack_from("<H", data, 18)
    if machine not in _SLOT_TYPES:
        raise ValueError(f"{path}: ELF machine {machine}, expected x86-64 (62) or AArch64 (183)")
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_type, offset, vaddr, filesz, memsz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None:
        raise ValueError(f"{path}: no dynamic section")
    dyn = {}
    for pos in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == _DT_NULL:
            break
        dyn.setdefault(tag, value)
    if _DT_SYMTAB not in dyn or _DT_STRTAB not in dyn:
        raise ValueError(f"{path}: no dynamic symbol table")
    symtab = _vaddr_to_offset(loads, dyn[_DT_SYMTAB])
    strtab = _vaddr_to_offset(loads, dyn[_DT_STRTAB])
    syment = dyn.get(_DT_SYMENT, 24)
    tables = []
    if _DT_JMPREL in dyn and dyn.get(_DT_PLTREL, _DT_RELA) == _DT_RELA:
        tables.append((dyn[_DT_JMPREL], dyn.get(_DT_PLTRELSZ, 0)))
    if _DT_RELA in dyn:
        tables.append((dyn[_DT_RELA], dyn.get(_DT_RELASZ, 0)))
    relaent = dyn.get(_DT_RELAENT, 24)
    slot_types = _SLOT_TYPES[machine]
    slots = []
    for vaddr, size in tables:
        start = _vaddr_to_offset(loads, vaddr)
        for pos in range(start, start + size, relaent):
            r_offset, r_info, _ = struct.unpack_from("<QQq", data, pos)
            if (r_info & 0xFFFFFFFF) not in slot_types or not r_info >> 32:
                continue
            st_name, _, _, st_shndx, _, _ = struct.unpack_from(
                "<IBBHQQ", data, symtab + (r_info >> 32) * syment)
            if st_shndx != 0:  # defined in the module itself, not imported
                continue
            name = data[strtab + st_name:data.index(b"\0", strtab + st_name)]
            if name == symbol:
                slots.append(r_offset)
    return sorted(set(slots))


class _DlPhdrInfo(ctypes.Structure):
    _fields_ = [("dlpi_addr", ctypes.c_size_t), ("dlpi_name", ctypes.c_char_p),
                ("dlpi_phdr", ctypes.c_void_p), ("dlpi_phnum", ctypes.c_uint16)]


def load_base(path):
    """Load base (bias) of the loaded shared object ``path``, from ``dl_iterate_phdr``.

    Returns
    -------
    int or None
        None if the file is not loaded in this process.
    """
    target = os.stat(path)
    found = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_DlPhdrInfo),
                                     ctypes.c_size_t, ctypes.c_void_p)

    def visit(info, size, data):
        name = info.contents.dlpi_name
        if name:
            try:
                st = os.stat(name)
            except OSError:
                return 0
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                found.append(info.contents.dlpi_addr)
                return 1
        return 0

    callback = callback_type(visit)
    libc = ctypes.CDLL(None)
    libc.dl_iterate_phdr.argtypes = [callback_type, ctypes.c_void_p]
    libc.dl_iterate_phdr.restype = ctypes.c_int
    libc.dl_iterate_phdr(callback, None)
    return found[0] if found else None


def _mapping(address, path):
    """(start, end, perms) of the /proc/self/maps mapping of ``path`` holding ``address``."""
    target = os.stat(path)
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) < 6:
                continue
            start, end = (int(v, 16) for v in parts[0].split("-"))
            if start <= address < end:
                if int(parts[4]) != target.st_ino or os.path.realpath(
                        parts[5].strip()) != os.path.realpath(path):
                    return None
                return start, end, parts[1]
    return None


def _write(libc, path, slot, value):
    """Write one pointer into the module's slot, making its page writable if needed."""
    mapping = _mapping(slot, path)
    if mapping is None:
        raise OSError(f"GOT slot {slot:#x} is not in a mapping of {path}")
    start, end, perms = mapping
    page = os.sysconf("SC_PAGE_SIZE")
    base = slot - slot % page
    if "w" not in perms:  # RELRO (BIND_NOW builds): read-only after relocation
        prot = sum(_PROT[c] for c in perms[:3] if c in _PROT)
        if libc.mprotect(base, page, prot | _PROT["w"]) != 0:
            raise OSError(ctypes.get_errno(), "mprotect of the GOT page failed")
        try:
            ctypes.c_uint64.from_address(slot).value = value
        finally:
            libc.mprotect(base, page, prot)
    else:
        ctypes.c_uint64.from_address(slot).value = value


def running_glibc():
    """Version string of the glibc this process runs on (``"glibc 2.36"``), or None."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    return version if version and version.startswith("glibc") else None


def _patch():
    """Route sep's rand_r calls to glibc rand (once). Returns None or why it is impossible."""
    if platform.system() != "Linux" or running_glibc() is None:
        return f"not Linux with glibc ({platform.system()})"
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return f"processor {platform.machine()} (the patch is for x86-64 and AArch64)"
    import sep

    path = os.path.realpath(sep.__file__)
    try:
        offsets = got_slots(path)
    except (OSError, ValueError, struct.error) as exc:
        return f"cannot read sep's module ({exc})"
    if not offsets:
        return f"sep's module {path} does not import rand_r (built differently)"
    libc = _libc()
    rand = ctypes.cast(libc.rand, ctypes.c_void_p).value
    rand_r = ctypes.cast(libc.rand_r, ctypes.c_void_p).value
    base = load_base(path)
    if base is None:
        return f"sep's module {path} not found among the loaded objects"
    slots = []
    for offset in offsets:
        slot = base + offset
        mapping = _mapping(slot, path)
        if mapping is None:
            return f"the rand_r slot {slot:#x} is not in a mapping of {path}"
        value = ctypes.c_uint64.from_address(slot).value
        # Expected: glibc's rand_r (resolved), a lazy-binding stub inside the module, or
        # rand (patched already, e.g. inherited from the parent of a forked worker).
        if value not in (rand_r, rand) and _mapping(value, path) is None:
            return f"the rand_r slot of {path} holds an unexpected address {value:#x}"
        slots.append((slot, value))
    written = []
    try:
        for slot, value in slots:
            if value != rand:
                _write(libc, path, slot, rand)
                written.append((slot, value))
    except OSError as exc:
        for slot, value in written:  # all slots or none: never half of sep patched
            _write(libc, path, slot, value)
        return f"cannot write sep's GOT ({exc})"
    # An original value equal to rand means a parent process patched it: undoing the
    # patch then restores glibc's rand_r (what the dynamic linker would have put there).
    _State.slots = [(slot, rand_r if value == rand else value) for slot, value in slots]
    _State.rand = rand
    return None


def patched():
    """True if sep's deblending draws from glibc ``rand()`` in this process."""
    if _State.slots is None:
        return False
    return all(ctypes.c_uint64.from_address(slot).value == _State.rand
               for slot, _ in _State.slots)


def select(mode=SEXTRACTOR):
    """Choose the generator of sep's deblending for this process.

    Parameters
    ----------
    mode : str
        ``SEXTRACTOR``: glibc ``rand()`` as source-extractor (sep's ``rand_r`` GOT slot
        patched, once per process); ``SEP``: sep's own ``rand_r`` (the slot restored if this
        process patched it).

    Returns
    -------
    used : str
        The mode in effect (``SEP`` when ``SEXTRACTOR`` is impossible here).
    note : str or None
        Why ``SEXTRACTOR`` was asked for but is not in effect, and what differs.
    """
    mode = str(mode).upper()
    if mode not in MODES:
        raise ValueError(f"deblend random mode {mode!r}: expected one of {', '.join(MODES)}")
    with _State.lock:
        if mode == SEP:
            if patched():
                libc = _libc()
                try:
                    for slot, original in _State.slots:
                        _write(libc, os.path.realpath(__import__("sep").__file__), slot,
                               original)
                except OSError:  # pragma: no cover - the same page was writable before
                    return SEXTRACTOR, "could not restore sep's rand_r slot"
            return SEP, None
        if not patched() and _State.failure is None:
            try:
                _State.failure = _patch()
            except Exception as exc:  # noqa: BLE001 - never fail a job for this
                _State.failure = f"{type(exc).__name__}: {exc}"
        if _State.failure is not None:
            return SEP, (f"DEBLEND_RANDOM SEXTRACTOR not possible: {_State.failure}; "
                         f"{CONSEQUENCE}")
        return SEXTRACTOR, None


def reset():
    """``srand(1)``: glibc's generator at the start of a source-extractor process."""
    _libc().srand(1)


def prepare(mode=SEXTRACTOR):
    """Select ``mode`` and, for ``SEXTRACTOR``, reset the sequence (call before each image).

    Returns
    -------
    used, note
        As :func:`select`.
    """
    used, note = select(mode)
    if used == SEXTRACTOR:
        reset()
    return used, note


def warn_once(note):
    """Issue ``note`` as a :class:`DeblendRandomWarning`, once per process."""
    if not _State.warned:
        _State.warned = True
        warnings.warn(note, DeblendRandomWarning, stacklevel=3)
