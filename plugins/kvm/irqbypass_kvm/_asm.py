"""The real-mode pieces both guest programs are made of (the PIC one in
:mod:`.guest`, the x2APIC one in :mod:`._apic`): little-endian immediates, an
IVT entry, the set-up's first and last steps, and the re-entry check."""

from __future__ import annotations

__all__ = ["idle_loop", "ivt_entry", "le16", "le32", "prologue", "reentry_check"]


def le16(value: int) -> tuple[int, int]:
    return value & 0xFF, (value >> 8) & 0xFF


def le32(value: int) -> tuple[int, int, int, int]:
    return value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFF, value >> 24


def prologue(code: bytearray) -> None:
    """Emit the set-up's start: interrupts off, ds = 0 (the IVT and the counters)."""
    emit = code.extend
    emit((0xFA,))  # cli                       ; no interrupts while we set up
    emit((0x31, 0xC0))  # xor ax, ax           ; ax = 0
    emit((0x8E, 0xD8))  # mov ds, ax           ; ds = 0: IVT and counter addressing


def ivt_entry(code: bytearray, vector: int) -> int:
    """Emit the IVT entry of ``vector`` (segment 0); return where its handler's
    offset goes, for the caller to patch once the handler is placed."""
    emit = code.extend
    emit((0xC7, 0x06, *le16(vector * 4)))  # mov word [vector*4], imm16 ...
    fixup = len(code)
    emit((0x00, 0x00))  # ... = the handler's offset (patched later)
    emit((0xC7, 0x06, *le16(vector * 4 + 2), 0x00, 0x00))  # mov word [vector*4+2], 0
    return fixup


def idle_loop(code: bytearray, ready_port: int) -> None:
    """Emit the set-up's end: report ready on ``ready_port``, then sleep in
    ``sti; hlt`` until each interrupt, forever."""
    emit = code.extend
    emit((0xB0, 0x01))  # mov al, 1
    emit((0xE6, ready_port))  # out 0xe0, al   ; tell the host: set up
    loop = len(code)
    emit((0xFB,))  # loop: sti                 ; interrupts on (after the next instruction)
    emit((0xF4,))  # hlt                       ; sleep until an interrupt
    emit((0xEB, (loop - (len(code) + 2)) & 0xFF))  # jmp loop


def reentry_check(code: bytearray, handlers: int, pushed: int) -> None:
    """Emit: if the interrupted IP is at or past ``handlers`` (the programs put
    their handlers last), jump to the re-entry path; the jump's rel8 offset is
    the last byte emitted, for the caller to patch. ``pushed``: the bytes the
    handler pushed before this check.

    A handler runs with IF clear (the interrupt gate cleared it) and never sets
    it, so no interrupt can arrive while one runs: a delivery that interrupted
    a handler, even before its first instruction, is an event the hypervisor
    injected a second time (an EXITINTINFO replayed after the handler's first
    exit). The guest counts those apart (``Guest.reentered``)."""
    code.extend((0x55,))  # push bp
    code.extend((0x89, 0xE5))  # mov bp, sp
    code.extend((0x81, 0x7E, 2 + pushed, *le16(handlers)))  # cmp word [bp+2+pushed], imm16
    code.extend((0x5D,))  # pop bp                ; (pop leaves the flags alone)
    code.extend((0x73, 0x00))  # jae reentered    ; (rel8 patched by the caller)
