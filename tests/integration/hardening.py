"""Run a command under the kernel restrictions that configs/fcnode.service asks
systemd for, so the daemon can be tried against them without systemd:

    python tests/integration/hardening.py MODE COMMAND...

MODE `seccomp` installs, with libseccomp, the filters systemd builds for
MemoryDenyWriteExecute= (no W+X mmap, no mprotect/pkey_mprotect adding
PROT_EXEC, no SHM_EXEC), RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
(socket() of any other family fails with EAFNOSUPPORT) and LockPersonality=
(personality() may not change anything). MODE `mdwe` uses the kernel's own
PR_SET_MDWE (Linux 6.3+), which newer systemd uses for MemoryDenyWriteExecute=.
Both survive execve. Then it execs COMMAND.
"""

from __future__ import annotations

import ctypes
import os
import sys

PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
AF_UNIX, AF_INET, AF_INET6, AF_MAX = 1, 2, 10, 46
EPERM, EAFNOSUPPORT = 1, 97
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_NE, SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 1, 4, 7
PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 38, 65, 1


class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def errno_action(err: int) -> int:
    return 0x00050000 | err


def seccomp() -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)

    def rule(err: int, name: str, *cmps: Cmp) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        fn = lib.seccomp_rule_add
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                       *([Cmp] * len(cmps))]
        if fn(ctx, errno_action(err), nr, len(cmps), *cmps) != 0:
            raise SystemExit(f"seccomp rule for {name} refused")

    rule(EPERM, "mmap", Cmp(2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC,
                            PROT_WRITE | PROT_EXEC))
    rule(EPERM, "mprotect", Cmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
    rule(EPERM, "pkey_mprotect", Cmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
    rule(EPERM, "shmat", Cmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    for family in range(AF_MAX):
        if family not in (AF_UNIX, AF_INET, AF_INET6):
            rule(EAFNOSUPPORT, "socket", Cmp(0, SCMP_CMP_EQ, family, 0))
    # Stricter than LockPersonality= (which also lets 0xffffffff query): libseccomp
    # takes one comparison per argument and rule.
    rule(EPERM, "personality", Cmp(0, SCMP_CMP_NE, 0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or lib.seccomp_load(ctx) != 0:
        raise SystemExit("could not load the seccomp filter")


def mdwe() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise SystemExit(f"PR_SET_MDWE failed (errno {ctypes.get_errno()}; Linux 6.3+ needed)")


if __name__ == "__main__":
    mode, command = sys.argv[1], sys.argv[2:]
    {"seccomp": seccomp, "mdwe": mdwe}[mode]()
    os.execv(command[0], command)
