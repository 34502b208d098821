"""A FileZilla-style FTPS session with Python's ftplib: explicit TLS, PROT P, MLSD, and data
connections that resume the control connection's TLS session (as FileZilla, WinSCP and
lftp do). Used by wharf's client-matrix tests; prints one JSON object of what it saw.

Usage: python3 ftplib_transfer.py PORT USER LOCAL DOWNLOADED  (password in WHARF_TEST_PASSWORD)
"""
import ftplib
import json
import os
import ssl
import sys


class SessionReusingFTP_TLS(ftplib.FTP_TLS):
    """ftplib does not resume the control session on data connections by itself."""

    reused = []

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session
            )
            self.reused.append(conn.session_reused)
        return conn, size


port, user, local, downloaded = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ftp = SessionReusingFTP_TLS(context=ctx, timeout=30)
ftp.connect("127.0.0.1", port)
ftp.auth()
ftp.login(user, os.environ["WHARF_TEST_PASSWORD"])
ftp.prot_p()
ftp.mkd("inbound")
ftp.cwd("inbound")
with open(local, "rb") as f:
    ftp.storbinary("STOR filezilla.bin", f, blocksize=65536)
listing = {name: facts for name, facts in ftp.mlsd()}
with open(downloaded, "wb") as f:
    ftp.retrbinary("RETR filezilla.bin", f.write)
ftp.quit()
print(json.dumps({
    "listing": {k: {"type": v.get("type"), "size": v.get("size")} for k, v in listing.items()},
    "session_reused": SessionReusingFTP_TLS.reused,
}))
