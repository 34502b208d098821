"""A partner's Python system: paramiko uploading the way scripts and WinSCP do, then reading
the file back. Used by wharf's client-matrix tests; prints one JSON object of what it saw.

Usage: python3 paramiko_transfer.py PORT USER LOCAL DOWNLOADED  (password in WHARF_TEST_PASSWORD)
"""
import json
import os
import sys
import time

import paramiko

port, user, local, downloaded = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username=user, password=os.environ["WHARF_TEST_PASSWORD"])
sftp = paramiko.SFTPClient.from_transport(t)
seen = {"host_key": t.get_remote_server_key().get_name()}
size = os.path.getsize(local)

# A script: put (which stats the result to confirm the size), chmod, utime, list.
sftp.mkdir("in")
attrs = sftp.put(local, "in/paramiko.bin", confirm=True)
seen["put_size"] = attrs.st_size
sftp.chmod("in/paramiko.bin", 0o640)
sftp.utime("in/paramiko.bin", (1700000000, 1700000000))
sftp.rename("in/paramiko.bin", "in/renamed.bin")

# WinSCP's way: upload to NAME.filepart, set the mtime, rename to the final name.
with open(local, "rb") as src, sftp.open("in/winscp.bin.filepart", "wb") as dst:
    dst.set_pipelined(True)
    while True:
        chunk = src.read(32768)
        if not chunk:
            break
        dst.write(chunk)
sftp.utime("in/winscp.bin.filepart", (1700000000, 1700000000))
sftp.posix_rename("in/winscp.bin.filepart", "in/winscp.bin")

seen["listdir"] = sorted(sftp.listdir("in"))
seen["stat_size"] = sftp.stat("in/winscp.bin").st_size
sftp.get("in/renamed.bin", downloaded)
seen["downloaded"] = os.path.getsize(downloaded) == size
sftp.close()
t.close()
print(json.dumps(seen))
