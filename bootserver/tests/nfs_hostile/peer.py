"""A hostile (or curious) NFS peer for tests/nfs_hostile.rs: raw RPC over TCP.

peer.py SERVER hostile             decoder attacks; each must close its connection
peer.py SERVER mount EXPORT        prints the export's root handle in hex
peer.py SERVER getattr HEX         prints the NFS status of GETATTR on that handle
peer.py SERVER cross OWN_EXPORT VICTIM_HEX   handle attacks across exports
peer.py SERVER hold N idle|partial opens N connections and holds them until stdin closes
"""
import os
import resource
import socket
import struct
import sys
import time

SERVER = sys.argv[1]
PORT = 2049
NFS, MOUNT = 100003, 100005
NFS3ERR_ACCES, NFS3ERR_STALE, NFS3ERR_BADHANDLE = 13, 70, 10001


def w(*xs):
    return b"".join(struct.pack(">I", x & 0xFFFFFFFF) for x in xs)


def opaque(b):
    return w(len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)


UNIX = w(1) + opaque(w(0) + opaque(b"peer") + w(0, 0, 0))


def record(body):
    return struct.pack(">I", len(body) | 0x80000000) + body


def call(xid, prog, vers, proc, args=b"", cred=UNIX):
    return record(w(xid, 0, 2, prog, vers, proc) + cred + w(0, 0) + args)


def connect():
    return socket.create_connection((SERVER, PORT), timeout=5)


def recvn(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def rpc(s, xid, prog, vers, proc, args=b""):
    s.sendall(call(xid, prog, vers, proc, args))
    n = struct.unpack(">I", recvn(s, 4))[0] & 0x7FFFFFFF
    body = recvn(s, n)
    words = struct.unpack(">%dI" % (len(body) // 4), body[: len(body) // 4 * 4])
    assert words[0] == xid and words[1] == 1 and words[2] == 0 and words[5] == 0, words[:6]
    return body[24:]  # after xid, REPLY, MSG_ACCEPTED, verifier, SUCCESS


def status(res):
    return struct.unpack(">I", res[:4])[0]


def mount(export):
    s = connect()
    res = rpc(s, 1, MOUNT, 3, 1, opaque(export.encode()))
    s.close()
    st = status(res)
    if st != 0:
        return st, None
    n = struct.unpack(">I", res[4:8])[0]
    return 0, res[8 : 8 + n]


def getattr_status(fh):
    s = connect()
    st = status(rpc(s, 2, NFS, 3, 1, opaque(fh)))
    s.close()
    return st


def lookup_status(fh, name):
    s = connect()
    st = status(rpc(s, 3, NFS, 3, 3, opaque(fh) + opaque(name)))
    s.close()
    return st


def closed_by_server(s, timeout=5.0):
    s.settimeout(timeout)
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def hostile():
    cred_with = lambda gids: w(1) + opaque(w(0) + opaque(b"x") + w(0, 0) + gids)
    root = b"\0" * 24
    attacks = {
        # A record of 2 GiB - 1 announced.
        "huge record mark": w(0xFFFFFFFF) + b"x" * 64,
        # Fragments that never end.
        "endless fragments": w(0) * 5000,
        # Fragments adding up past the record limit.
        "record past the limit": w(1 << 20) + b"\0" * (1 << 20) + w(0x80000000 | (1 << 20)) + b"\0" * 4096,
        # AUTH_UNIX claiming 2^30 gids, and one with 17.
        "huge gid count": call(9, NFS, 3, 0, cred=cred_with(w(0x40000000, 1, 2))),
        "17 gids": call(9, NFS, 3, 0, cred=cred_with(w(17, *range(17)))),
        # A credential body of 2 GiB.
        "huge credential": record(w(9, 0, 2, NFS, 3, 0, 1, 0x7FFFFFFF) + b"\0" * 200),
        # LOOKUP with a name of 2 GiB.
        "huge opaque": call(9, NFS, 3, 3, opaque(root) + w(0x7FFFFFF0) + b"a" * 100),
    }
    failed = []
    for name, data in attacks.items():
        s = connect()
        try:
            s.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            pass
        ok = closed_by_server(s)
        s.close()
        # The service answers a well-formed call right after.
        s = connect()
        rpc(s, 10, NFS, 3, 0)
        s.close()
        print(("closed: " if ok else "NOT CLOSED: ") + name, flush=True)
        if not ok:
            failed.append(name)
    sys.exit(1 if failed else 0)


def cross(own_export, victim_hex):
    victim = bytes.fromhex(victim_hex)
    results = {}
    # A handle of an export this host may not use, as if sniffed off the wire.
    results["victim's handle, GETATTR"] = getattr_status(victim)
    results["victim's handle, LOOKUP"] = lookup_status(victim, b"file")
    # MOUNT of that export.
    results["MOUNT of the victim export"] = mount("/client")[0]
    # Our own export's handle with its id moved to the victim export (id = export << 56 | ino).
    st, own = mount(own_export)
    assert st == 0, st
    fid = struct.unpack("<Q", own[:8])[0]
    moved = struct.pack("<Q", (fid & ((1 << 56) - 1)) | (1 << 56)) + own[8:]
    results["own handle moved to the victim export"] = getattr_status(moved)
    # The pseudo-root above the exports (id 1), with a zero MAC and with our export's MAC.
    results["forged root handle, LOOKUP client"] = lookup_status(struct.pack("<Q", 1) + b"\0" * 16, b"client")
    results["root id with own MAC, LOOKUP client"] = lookup_status(struct.pack("<Q", 1) + own[8:], b"client")
    results["LOOKUP .. from own export"] = lookup_status(own, b"..")
    # `..` from our own export's root stays there (NFS3_OK), never reaching the victim.
    bad = False
    for k, v in results.items():
        want_ok = k == "LOOKUP .. from own export"
        good = (v == 0) if want_ok else (v != 0)
        print(("ok" if good else "WRONG") + ": %s -> %d" % (k, v), flush=True)
        bad |= not good
    sys.exit(1 if bad else 0)


def hold(n, mode):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    for i in range(n):
        try:
            s = socket.create_connection((SERVER, PORT), timeout=0.5)
        except OSError:
            continue
        try:
            if mode == "idle":
                s.sendall(call(100 + i, NFS, 3, 0))
            else:
                s.sendall(b"\x80\x00")  # half a record mark
        except OSError:
            pass
        held.append(s)
    print("held %d" % len(held), flush=True)
    sys.stdin.read()


cmd = sys.argv[2]
if cmd == "hostile":
    hostile()
elif cmd == "mount":
    st, fh = mount(sys.argv[3])
    assert st == 0, "MOUNT %s: %d" % (sys.argv[3], st)
    print(fh.hex())
elif cmd == "getattr":
    print(getattr_status(bytes.fromhex(sys.argv[3])))
elif cmd == "cross":
    cross(sys.argv[3], sys.argv[4])
elif cmd == "hold":
    hold(int(sys.argv[3]), sys.argv[4])
