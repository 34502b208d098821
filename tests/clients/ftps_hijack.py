"""Another client from the same address (as every client looks behind a load balancer)
connects first to the passive port a partner was given, and sends its own bytes when the
partner's STOR starts. Prints one JSON object: the partner's replies and whether the
intruder's TLS handshake and data went through.

Usage: python3 ftps_hijack.py PORT USER MODE  (password in WHARF_TEST_PASSWORD)
MODE: "tls" (the intruder speaks TLS with a session of its own) or "garbage" (not TLS at all).
"""
import ftplib
import json
import os
import re
import socket
import ssl
import sys
import threading
import time

port, user, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

partner = ftplib.FTP_TLS(context=ctx, timeout=30)
partner.connect("127.0.0.1", port)
partner.auth()
partner.login(user, os.environ["WHARF_TEST_PASSWORD"])
partner.prot_p()
reply = partner.sendcmd("PASV")
nums = [int(n) for n in re.search(r"\((.*)\)", reply).group(1).split(",")]
data_port = nums[4] * 256 + nums[5]

seen = {"intruder_handshake": False, "intruder_sent": 0}


def intrude():
    raw = socket.create_connection(("127.0.0.1", data_port), timeout=30)
    if mode == "garbage":
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 100)
        seen["intruder_sent"] = -1
        try:
            raw.recv(100)
        except OSError:
            pass
        return
    try:
        # A fresh TLS session: the intruder does not have the partner's.
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        seen["intruder_handshake"] = True
        tls.sendall(b"forged settlement data\n")
        seen["intruder_sent"] = 23
        tls.unwrap()
    except (OSError, ssl.SSLError) as e:
        seen["intruder_error"] = type(e).__name__


t = threading.Thread(target=intrude)
t.start()
# Let the intruder's connection be the one the server takes for this session.
time.sleep(1)
partner.putcmd("STOR partner.csv")
replies = []
while True:
    line = partner.getline()
    replies.append(line)
    if re.match(r"^[245]\d\d ", line):
        break
t.join(30)
seen["replies"] = replies
try:
    partner.quit()
except (OSError, ftplib.Error):
    pass
print(json.dumps(seen))
