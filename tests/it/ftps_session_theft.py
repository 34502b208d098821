"""An intruder behind the same balancer as a partner (so with the partner's address) races
the partner for its passive port, then tries to pass for the partner's data connection by
resuming a TLS session on the partner's next passive port. Prints one JSON object of what
each side saw.

Usage: python3 ftps_session_theft.py PORT USER NAME TLS SOURCE  (password in WHARF_TEST_PASSWORD)
  NAME    the partner's file (uploaded first, then the target of the intruder's RETR and STOR)
  TLS     the intruder's TLS: "tls12-tickets" (RFC 5077 tickets), "tls12-ids" (session IDs
          only) or "tls13" (PSK tickets)
  SOURCE  where the intruder's session comes from: "race" (a full handshake on the partner's
          passive port, answered 425) or "control" (the intruder's own FTPS control connection)

Rounds, each on a fresh PASV of the partner's (the tests give the server a single passive
port, so the intruder always knows it):
  race     the intruder connects first and does a full TLS handshake; the partner sends RETR
  retr     the intruder connects first, resuming its session; the partner sends RETR
  stor     the intruder connects first, resuming its session and sending forged bytes; the
           partner sends STOR
Before them, the partner sends PASV twice (the second must open the port again); after them,
it downloads NAME on its own data connection (resuming its control session).
"""
import ftplib
import hashlib
import io
import json
import os
import re
import socket
import ssl
import sys
import threading
import time

port, user, name, tls, source = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
password = os.environ["WHARF_TEST_PASSWORD"]
FORGED = b"forged settlement data\n" * 100


def context(tls_mode=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls_mode == "tls12-tickets":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif tls_mode == "tls12-ids":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_TICKET
    elif tls_mode == "tls13":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class SessionReusingFTP_TLS(ftplib.FTP_TLS):
    """A partner's client: data connections resume the control connection's session."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.reused = []

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session
            )
            self.reused.append(conn.session_reused)
        return conn, size


def login(ctx):
    ftp = SessionReusingFTP_TLS(context=ctx, timeout=30)
    ftp.connect("127.0.0.1", port)
    ftp.auth()
    ftp.login(user, password)
    ftp.prot_p()
    return ftp


def drain(sock):
    n = 0
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            n += len(chunk)
    except (OSError, ssl.SSLError) as e:
        return n, type(e).__name__
    return n, None


def race(ftp, command, intruder):
    """The partner asks for a passive port; the intruder connects to it first and runs
    `intruder` there (a thread: its handshake waits for the server), then the partner sends
    `command` and reads the replies up to the final one."""
    reply = ftp.sendcmd("PASV")
    nums = [int(n) for n in re.search(r"\((.*)\)", reply).group(1).split(",")]
    raw = socket.create_connection(("127.0.0.1", nums[4] * 256 + nums[5]), timeout=30)
    seen = {}

    def run():
        try:
            intruder(raw, seen)
        except (OSError, ssl.SSLError) as e:
            seen["error"] = type(e).__name__ + ": " + str(e)

    t = threading.Thread(target=run)
    t.start()
    # The server takes the intruder's connection for this session before the command.
    time.sleep(0.3)
    ftp.putcmd(command)
    replies = []
    while True:
        line = ftp.getline()
        replies.append(line)
        if re.match(r"^[245]\d\d ", line):
            break
    t.join(30)
    seen["replies"] = replies
    return seen


stolen = {}
ictx = context(tls)


def full_handshake(raw, seen):
    s = ictx.wrap_socket(raw, server_hostname="127.0.0.1")
    seen["handshake"] = True
    seen["version"] = s.version()
    # TLS 1.3 tickets come after the handshake: read them before looking at the session.
    seen["bytes"], seen["end"] = drain(s)
    stolen["session"] = s.session
    seen["session_id"] = s.session.id.hex()
    seen["session_has_ticket"] = s.session.has_ticket


def resume_and_read(raw, seen):
    s = ictx.wrap_socket(raw, server_hostname="127.0.0.1", session=stolen.get("session"))
    seen["resumed"] = s.session_reused
    seen["bytes"], seen["end"] = drain(s)


def resume_and_write(raw, seen):
    s = ictx.wrap_socket(raw, server_hostname="127.0.0.1", session=stolen.get("session"))
    seen["resumed"] = s.session_reused
    s.sendall(FORGED)
    seen["sent"] = len(FORGED)
    s.unwrap()


partner = login(context())
payload = os.urandom(100_000)
partner.storbinary("STOR " + name, io.BytesIO(payload), blocksize=65536)
out = {"partner_tls": partner.sock.version()}


def reply(ftp, cmd):
    ftp.putcmd(cmd)
    return ftp.getline()


# A PASV nobody connects to: the next one closes its port and opens one again (the same, with
# a single passive port).
out["pasv_twice"] = [reply(partner, "PASV"), reply(partner, "PASV")]

if source == "control":
    # A partner of its own (same balancer address): its control connection's session.
    own = login(ictx)
    own.voidcmd("NOOP")  # TLS 1.3: the tickets arrive after the handshake
    stolen["session"] = own.sock.session
    out["intruder_control_tls"] = own.sock.version()
    # What the intruder will offer is a session the server issued, with a ticket or an ID.
    out["intruder_control_session_resumable"] = bool(
        own.sock.session.has_ticket or own.sock.session.id
    )
out["race"] = race(partner, "RETR " + name, full_handshake)
if source == "control":
    stolen["session"] = own.sock.session
out["retr"] = race(partner, "RETR " + name, resume_and_read)
out["stor"] = race(partner, "STOR " + name, resume_and_write)

# The partner's own transfer, on its own data connection.
got = io.BytesIO()
try:
    partner.retrbinary("RETR " + name, got.write)
    out["partner_download_intact"] = got.getvalue() == payload
except (OSError, ssl.SSLError, ftplib.Error) as e:
    out["partner_download_error"] = type(e).__name__ + ": " + str(e)
out["partner_sha256"] = hashlib.sha256(payload).hexdigest()
out["partner_session_reused"] = partner.reused
try:
    partner.quit()
except (OSError, ftplib.Error):
    pass
print(json.dumps(out))
